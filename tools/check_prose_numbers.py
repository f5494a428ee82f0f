"""Check that the numbers a chapter's prose states come from that chapter's outputs.

    python tools/check_prose_numbers.py [book/*.ipynb]

Every decimal number (``3.25``, ``9.5e-5``, ``2.6%``) and every number with a thousands
separator (``9,371``, ``18 000``) in a notebook's markdown cells must either

- appear in the notebook's stored code-cell outputs: a decimal matches an output number
  printed with the same decimals or up to three more that round to it (prose ``1.59``
  matches an output ``1.59`` or ``1.5882``, not ``1.6`` or ``2``; ``9.5e-5`` matches
  ``9.52e-05``; ``2.6%`` also matches ``0.026``), a separated integer matches the same
  integer printed with or without separators; or
- be marked as a quoted figure with its source: the same sentence carries a citation,
  ``{cite}`key``` (any ``{cite:...}`` role, an entry of ``book/references.bib``), or a
  cross-reference to the page it comes from (``{doc}``, ``{ref}``, ``{numref}``), e.g.

      Llama-3 70B keeps 98% of its accuracy at 3.25 bits per weight {cite}`vanderouderaa2024pvq`.

Not checked: code (fenced blocks and inline ``code``), display math (``$$ ... $$``,
``{math}`` blocks), link targets and URLs, HTML comments. Inline math is prose: a
measured number written as ``$\\mu \\le 6.1$`` is checked like any other.

A heuristic, not a proof: it finds numbers that no output prints; a prose number that
happens to equal some other output number passes.

Prints each unsupported number with its cell and sentence; exits 1 if there are any.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SEP = "[ \u00a0\u2009\u202f]"  # space, no-break space, thin space, narrow no-break space
# A decimal (with optional exponent) or an integer grouped in threes by commas or spaces.
PROSE_NUMBER = re.compile(
    rf"(?<![\w.,])(?<![A-Za-z]-)"
    rf"(?:(?P<grouped>\d{{1,3}}(?:,\d{{3}})+(?![\d])|\d{{1,3}}(?:{SEP}\d{{3}})+(?![\d]))"
    rf"(?:\.(?P<gfrac>\d+)(?!\d))?"
    rf"|(?P<int>\d+)\.(?P<frac>\d+)(?!\d)(?P<exp>[eE][-+]?\d+)?)"
    rf"(?![.,]\d)(?P<pct>\s?%)?")
OUTPUT_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])"
                           r"|(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
SOURCE_MARK = re.compile(r"\{(?:cite(?::[a-z]+)?|doc|ref|numref)\}`")


@dataclass(frozen=True)
class Claim:
    cell: int          # index of the markdown cell in the notebook (0-based)
    number: str        # as written
    sentence: str      # the sentence it stands in, shortened


def _strip_markdown(text: str) -> str:
    """The prose of a markdown cell: code, display math, link targets, comments removed."""
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1\s*$", " ", text, flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
    text = re.sub(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", " ", text, flags=re.DOTALL)
    # roles keep their name (a citation marks its sentence) but lose their target
    text = re.sub(r"(\{[\w:-]+\})`[^`]*`", r"\1`x`", text)
    text = re.sub(r"(?<!\})``[^`].*?``|(?<!\})`[^`\n]+`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<?https?://\S+", " ", text)
    return text


def _sentences(text: str) -> list[str]:
    """Paragraphs and list items, then sentences (a full stop, then space and a capital)."""
    out = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[-*+]|\d+\.)\s)|\n(?=\s*\|)", text):
        out.extend(re.split(r"(?<=[.!?])\s+(?=[A-Z(*_$\[])", block))
    return [s.strip() for s in out if s.strip()]


def output_text(nb: dict) -> str:
    """Every stored output of every code cell, as text (HTML tags removed)."""
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if out.get("output_type") == "stream":
                parts.append("".join(out.get("text", "")))
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") or mime == "application/json":
                    value = "".join(value) if isinstance(value, list) else str(value)
                    parts.append(re.sub(r"<[^>]+>", " ", value) if mime == "text/html" else value)
    return "\n".join(parts)


def _output_values(text: str) -> list[tuple[float, int]]:
    """(value, decimals printed) of every number in the outputs."""
    values = []
    for m in OUTPUT_NUMBER.finditer(text):
        token = m.group(0).replace(",", "")
        mantissa, *rest = re.split(r"[eE]", token)
        decimals = (len(mantissa.split(".")[1]) if "." in mantissa else 0) - (int(rest[0]) if rest else 0)
        try:
            values.append((float(token), decimals))
        except ValueError:
            pass
    return values


def _supported(m: re.Match, values: list[tuple[float, int]]) -> bool:
    """Does an output print this number: the same digits, or up to 3 more that round to it?"""
    if m.group("grouped") is not None:
        whole = re.sub(rf",|{SEP}", "", m.group("grouped"))
        frac = m.group("gfrac") or ""
        target, places = float(f"{whole}.{frac}" if frac else whole), len(frac)
    else:
        exp = int(m.group("exp")[1:]) if m.group("exp") else 0
        target = float(f"{m.group('int')}.{m.group('frac')}") * 10.0 ** exp
        places = len(m.group("frac")) - exp
    candidates = [(target, places)]
    if m.group("pct"):
        candidates.append((target / 100, places + 2))
    for value, places in candidates:
        want = f"{value:.{max(places, 0)}f}"
        for v, printed in values:
            if places <= printed <= places + 3 and f"{v:.{max(places, 0)}f}" == want:
                return True
    return False


def prose_number_claims(nb: dict) -> tuple[list[Claim], list[Claim]]:
    """(supported, unsupported) claims: every checked number of the notebook's prose."""
    values = _output_values(output_text(nb))
    supported, unsupported = [], []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for sentence in _sentences(_strip_markdown("".join(cell["source"]))):
            quoted = SOURCE_MARK.search(sentence) is not None
            for m in PROSE_NUMBER.finditer(sentence):
                short = re.sub(r"\s+", " ", sentence)
                short = short if len(short) <= 160 else short[:157] + "..."
                claim = Claim(i, m.group(0).strip(), short)
                (supported if quoted or _supported(m, values) else unsupported).append(claim)
    return supported, unsupported


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "book").glob("*.ipynb"))
    total = 0
    for path in paths:
        nb = json.loads(path.read_text())
        supported, unsupported = prose_number_claims(nb)
        total += len(unsupported)
        print(f"{path.name}: {len(unsupported)} of {len(supported) + len(unsupported)} "
              "prose numbers not found in the outputs and not quoted with a source")
        for c in unsupported:
            print(f"  markdown cell {c.cell}: {c.number!r} in: {c.sentence}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
