"""Plumbing: devices, precision, atomic writes."""

import os

import pytest
import torch

import utils


def test_autocast_and_device_errors():
    with pytest.raises(utils.UserError, match="fp16 needs a CUDA"):
        utils.autocast(torch.device("cpu"), "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(utils.UserError, match="no CUDA"):
            utils.resolve_device("cuda")
    assert utils.resolve_device("cpu").type == "cpu"

