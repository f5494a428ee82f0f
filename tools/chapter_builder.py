"""What the chapter builders share (tools/build_*_chapter.py): collect markdown and code
cells in order, then write them as a notebook without outputs, with cell ids derived from
the chapter's name and the cell's position (tools/run_notebooks.py executes it).
`build(path, keep_outputs=True)` updates only the sources of an executed notebook."""

import hashlib
import json
from pathlib import Path


class Chapter:
    def __init__(self, name: str):
        self.name, self.cells = name, []

    def md(self, text):
        self.cells.append(("markdown", text.strip("\n"), []))

    def code(self, text, tags=()):
        self.cells.append(("code", text.strip("\n"), list(tags)))

    def cell_id(self, kind, i):
        return hashlib.sha1(f"{self.name}-{i}-{kind}".encode()).hexdigest()[:8]

    def build(self, path: Path, keep_outputs: bool = False):
        """Write the notebook at path. With keep_outputs, replace only the cell sources of
        the notebook already there, keeping its outputs, execution counts and metadata; its
        cells must match the builder's one to one (count, kinds, ids, tags)."""
        cells = []
        for i, (kind, text, tags) in enumerate(self.cells):
            cell = {"cell_type": kind, "id": self.cell_id(kind, i), "metadata": {},
                    "source": text.splitlines(keepends=True)}
            if tags:
                cell["metadata"]["tags"] = tags
            if kind == "code":
                cell.update(execution_count=None, outputs=[])
            cells.append(cell)
        nb = {"cells": cells, "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python", "version": "3.11.7"}},
            "nbformat": 4, "nbformat_minor": 5}
        if keep_outputs:
            old = json.loads(path.read_text(encoding="utf-8"))
            key = lambda c: (c["cell_type"], c.get("id"), c["metadata"].get("tags", []))
            if [key(c) for c in old["cells"]] != [key(c) for c in cells]:
                raise ValueError(f"{path}: its cells do not match the builder's one to one "
                                 "(count, kinds, ids, tags); rebuild it and re-execute it")
            for mine, theirs in zip(cells, old["cells"]):
                theirs["source"] = mine["source"]
            nb = old
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
