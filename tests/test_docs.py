"""README and docs/: a short front page that links every page, and commands whose flags exist."""

import re

import pytest

import checkpoint
from conftest import ROOT, load_script

PAGES = sorted((ROOT / "docs").glob("*.md"))
NOTES = sorted((ROOT / "docs" / "notes").glob("*.md"))  # the run diaries, linked from checkpoints/README.md
TEXTS = {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", ROOT / "checkpoints" / "README.md",
                                                             ROOT / "assets" / "README.md", *PAGES, *NOTES]}


@pytest.mark.parametrize("page, most_lines, linked, prefix", [("README.md", 200, PAGES, "docs/"),
                                                              ("checkpoints/README.md", 60, NOTES, "../docs/notes/")])
def test_the_front_page_and_the_model_card_are_short_and_link_every_page(page, most_lines, linked, prefix):
    assert len(TEXTS[page].splitlines()) <= most_lines
    for linked_page in linked:
        assert f"({prefix}{linked_page.name})" in TEXTS[page], linked_page.name


def test_the_product_stands_on_its_own():
    """Neither the pages nor the shipped checkpoints' info records name internal paths."""
    infos = {path.name: "\n".join(str(v) for v in checkpoint.load_checkpoint(path).get("info", {}).values())
             for path in (ROOT / "checkpoints").glob("*.pth")}
    for name, text in {**TEXTS, **infos}.items():
        assert "../shared" not in text and "DESIGN.md" not in text, name


def commands():
    """(page, script, flags) of every `python X.py ...` / `torchrun ... X.py ...` line in a code block."""
    found = []
    for name, text in TEXTS.items():
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                match = re.search(r"(?:^|\s)(\w+)\.py\b(.*)", line.split("#")[0])
                if match and match.group(1) != "conftest":
                    found.append((name, match.group(1), re.findall(r"(?<![\w-])--[a-z][\w-]*", match.group(2))))
    return found


@pytest.mark.parametrize("page, script, flags", commands(), ids=lambda x: str(x)[:40])
def test_every_flag_in_the_docs_exists(page, script, flags, capsys):
    with pytest.raises(SystemExit):
        load_script(script).main(["--help"])
    help_text = capsys.readouterr().out
    for flag in flags:
        assert re.search(rf"{flag}(?![\w-])", help_text), f"{page}: {script}.py has no {flag}"


def test_the_readme_gives_ci_s_test_command_and_the_quick_lane():
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = re.findall(r"-m (pytest [^\n]*)", ci)
    assert f"python -m {command.strip()}`" in TEXTS["README.md"]
    assert f'python -m {command.strip()} -m "not slow"`' in TEXTS["README.md"]
