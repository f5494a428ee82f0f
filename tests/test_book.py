"""The book's own invariants: the table of contents, stored outputs, the config."""

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))
from check_prose_numbers import prose_number_claims  # noqa: E402


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
    text = (ROOT / "_config.yml").read_text()
    config = yaml.safe_load(text)
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]  # MathJax from the site
    # The build renders the stored outputs (verified by `make test` under nbval and by
    # test_notebook_stores_the_outputs_of_every_cell); `make notebooks` re-executes.
    assert config["execute"]["execute_notebooks"] == "off"
    for pattern in (".venv/*", "_build/*", "tests/*", "pvqref/*", "README.md"):
        assert f'"{pattern}"' in text
    makefile = (ROOT / "Makefile").read_text()
    assert "jupyter-book build . -W -n --keep-going" in makefile
    assert "tools/run_notebooks.py book/*.ipynb" in makefile


def test_make_test_runs_the_notebooks_one_at_a_time():
    # Two notebook kernels side by side oversubscribe torch's threads on two cores (CI,
    # 12-07: the LLaMA chapter's live quantization passed nbval's cell timeout under -n 2).
    recipe = (ROOT / "Makefile").read_text().split("\ntest: setup\n")[1].split("\n\n")[0]
    runs = [line for line in recipe.splitlines() if "pytest" in line]
    notebooks = [line for line in runs if "--nbval" in line]
    assert len(runs) == 2 and len(notebooks) == 1
    assert " -n " not in notebooks[0] and notebooks[0].rstrip().endswith(" book")
    assert "OMP_NUM_THREADS=1" in runs[0] and runs[0].rstrip().endswith(" tests")


def _prints(tree: ast.AST) -> bool:
    """Does this code print or show something whenever it runs? Only top-level statements
    and loop/with bodies count: a print under an if, try or def may not run."""
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.For, ast.With, ast.While)) and _prints(node):
            return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            f = node.value.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("print", "display", "show"):
                return True
    return False


def _shows_a_value(source: str, tree: ast.Module) -> bool:
    """Does the cell end with an expression (not a call, which may return None) that
    IPython displays, i.e. not silenced with a trailing semicolon?"""
    last = tree.body[-1] if tree.body else None
    return (isinstance(last, ast.Expr) and not isinstance(last.value, ast.Call)
            and not source.rstrip().endswith(";"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stores_the_outputs_of_every_cell(path):
    """`make book` renders what is stored, so an unexecuted or stripped notebook must fail here."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    for i, cell in enumerate(code, 1):
        source = "".join(cell["source"])
        assert cell["execution_count"] is not None, f"code cell {i} was never executed"
        python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                            for line in source.splitlines())
        tree = ast.parse(python)
        if _prints(tree) or _shows_a_value(python, tree):
            assert cell.get("outputs"), (f"code cell {i} prints or shows a value but has no stored "
                                         "output: run `make notebooks`")
    with_output = sum(bool(c.get("outputs")) for c in code)
    assert with_output >= len(code) / 2, (f"only {with_output} of {len(code)} code cells have "
                                          "stored outputs: run `make notebooks`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_numbers_come_from_the_outputs_or_a_source(path):
    """Every decimal and thousands-separated number in the prose is printed by a cell of the
    chapter, or its sentence cites its source (tools/check_prose_numbers.py explains)."""
    _, unsupported = prose_number_claims(json.loads(path.read_text()))
    assert not unsupported, "\n".join(f"markdown cell {c.cell}: {c.number!r} in: {c.sentence}"
                                       for c in unsupported)


def test_every_citation_is_in_the_bibliography():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    bib = "".join((ROOT / f).read_text() for f in config["bibtex_bibfiles"])
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.MULTILINE))
    assert keys, "book/references.bib has no entries"
    texts = [(ROOT / "book" / "intro.md").read_text()] + [
        "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                if c["cell_type"] == "markdown") for nb in NOTEBOOKS]
    for text in texts:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            for key in group.split(","):
                assert key.strip() in keys, f"{{cite}}`{key.strip()}` is not in {config['bibtex_bibfiles']}"


def test_prose_number_check_follows_its_convention():
    def nb(prose, output):
        return {"cells": [{"cell_type": "markdown", "source": [prose]},
                          {"cell_type": "code", "source": ["print()"], "execution_count": 1,
                           "outputs": [{"output_type": "stream", "name": "stdout", "text": [output]}]}]}
    def unsupported(prose, output):
        return [c.number for c in prose_number_claims(nb(prose, output))[1]]
    out = "ratio 1.5882, rate 9,371 vectors/s, error 9.52e-05, share 0.026, 38\n"
    assert unsupported("PVQ is 1.59x the bound at 9,371 vectors/s.", out) == []
    assert unsupported("An error of 9.5e-5 and 2.6% of the bits.", out) == []
    assert unsupported("It is 1.6x (not 1.7x) the bound, 38.0 in all, 9 371 per second.", out) == ["1.7", "38.0"]
    assert unsupported("Llama-3 70B keeps 98% at 3.25 bits {cite}`vanderouderaa2024pvq`. "
                       "Ours: 3.25 bits.", out) == ["3.25"]
    assert unsupported("Code `x = 0.5` and $$y = 0.25$$ and [a](https://x.org/1.5) are not prose; "
                       "torch 2.13.0 is a version.", out) == []
