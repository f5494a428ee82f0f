"""What the chapters share for presentation: tables and figures that fit the book's column.

A chapter's cells should show the idea in a few lines; the formatting lives here.

- :func:`table` renders rows as a Markdown table (an HTML table on the page, plain
  Markdown text elsewhere), so a printed table never runs past the column as fixed-width
  text and nbval still compares every cell of it.
- :func:`figure` makes a matplotlib figure as wide as the text column with panels at least
  :data:`PANEL_HEIGHT` inches tall per row, and :func:`style` sets readable font sizes.

Used by every chapter (book/*.ipynb).
"""

from __future__ import annotations

COLUMN_WIDTH = 6.8          # inches: the text column (688 px in the rendered book)
PANEL_HEIGHT = 2.8          # inches per row of panels: >= 280 px on the page
FONT_SIZE = 9


class Table:
    """A Markdown table that displays as HTML in a notebook; ``str()`` is its Markdown."""

    def __init__(self, markdown: str):
        self.markdown = markdown

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __repr__(self) -> str:              # what nbval compares as text/plain
        return self.markdown

    __str__ = __repr__


def _cell(value, fmt: str | None) -> str:
    if fmt is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def table(header, rows, formats=None, align=None) -> Table:
    """A table of ``rows`` (sequences) under ``header`` (column names).

    ``formats``: one format spec per column (e.g. ``".3g"``, ``",.0f"``) or None, applied to
    numbers; ``align``: a string of "l"/"r" per column (default: numbers right, text left).

    Used by every chapter (book/*.ipynb)."""
    header = [str(h) for h in header]
    rows = [list(r) for r in rows]
    n = len(header)
    if any(len(r) != n for r in rows):
        raise ValueError(f"every row needs {n} cells (one per column of the header)")
    formats = list(formats) if formats is not None else [None] * n
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][c], (int, float)) else "l"
                        for c in range(n))
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [header, rule] + [[_cell(v, f) for v, f in zip(r, formats)] for r in rows]
    return Table("\n".join("| " + " | ".join(line) + " |" for line in lines))


def style() -> None:
    """Readable fonts for figures drawn at the column's width (call once per chapter).

    Used by every chapter (book/*.ipynb)."""
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1,
                         "axes.labelsize": FONT_SIZE, "legend.fontsize": FONT_SIZE - 1,
                         "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1,
                         "figure.dpi": 100, "savefig.dpi": 150})


def figure(nrows: int = 1, ncols: int = 1, height: float = PANEL_HEIGHT, **kwargs):
    """``plt.subplots`` at the column's width, ``height`` inches per row of panels, with
    constrained layout (labels never overlap). Returns (fig, axes) as plt.subplots does.

    Used by every chapter (book/*.ipynb)."""
    import matplotlib.pyplot as plt
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, height * nrows), **kwargs)


TEXT_WIDTH = 80             # characters of printed text that fit the column without scrolling


def wrap(text: str, width: int = TEXT_WIDTH) -> str:
    """``text`` with each of its lines folded at ``width`` characters (continuations
    indented by two spaces), for printed sentences that would otherwise scroll.

    Used by every chapter (book/*.ipynb)."""
    import textwrap
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ") or line
                     for line in text.splitlines())
