"""notebooks/demo.ipynb is stored without outputs and runs end to end in a Jupyter kernel."""

import re
import sys
import time

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = ROOT / "notebooks" / "demo.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_end_to_end(monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel must be this environment's Python (so it sees the same packages)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL', sys.prefix)"))
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # as Jupyter starts it
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    print(f"notebook ran in {time.perf_counter() - start:.1f} s")
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    kernel = re.search(r"KERNEL (.*)", text).group(1).strip()
    assert kernel == sys.prefix
    assert figures == 2
    assert "SRResNet x4: 1,549,462 parameters, eval mode: True" in text
    psnr = {name: float(value) for name, value in re.findall(r"(bicubic|SRResNet)\s+PSNR ([\d.]+) dB", text)}
    assert psnr["SRResNet"] > psnr["bicubic"] + 0.5, psnr
    assert "tiled output identical to the whole-image output: True" in text
    assert len(re.findall(r"max abs difference to the reference", text)) == 3
