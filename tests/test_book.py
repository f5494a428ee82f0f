"""The book's own invariants: the table of contents, stored outputs, the config."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def toc_files() -> list[str]:
    # _toc.yml is tiny and flat: read the `root:` and `- file:` entries.
    text = (ROOT / "_toc.yml").read_text()
    return re.findall(r"^\s*(?:root|- file):\s*(\S+)", text, flags=re.MULTILINE)


def test_toc_lists_every_chapter_and_nothing_missing():
    listed = toc_files()
    assert listed[0] == "book/intro"
    for entry in listed:
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".md", ".ipynb")), entry
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in listed, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_are_stored_without_timestamps(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a chapter notebook has code"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        "store outputs with tools/run_notebooks.py (cells executed once, in order)"
    for cell in nb["cells"]:
        assert "execution" not in cell.get("metadata", {}), "timestamps in cell metadata"
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", "a stored output is an error"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_summary_and_exercises(path):
    nb = json.loads(path.read_text())
    headings = [line.strip() for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("## ")]
    assert headings[-2:] == ["## Summary", "## Exercises"]


def test_config_builds_offline_and_strictly():
    config = (ROOT / "_config.yml").read_text()
    assert "sphinx-mathjax-offline" in config           # MathJax from the built site
    assert "execute_notebooks: force" in config          # a failing cell fails the build
    for pattern in (".venv/*", "_build/*", "tests/*", "pvqref/*", "README.md"):
        assert f'"{pattern}"' in config
    makefile = (ROOT / "Makefile").read_text()
    assert "jupyter-book build . -W -n --keep-going" in makefile
