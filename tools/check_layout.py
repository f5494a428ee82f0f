"""Check what a reader sees on every page of the built book, in headless Chromium.

    python tools/check_layout.py [--json report.json] [_build/html]

Each page is opened at a 1280 px wide window with the network off (the same Chromium
flags as ``tools/check_math.py``). A copy of the site is made in a temporary folder and
a small script is added to each page; after the page has loaded and MathJax has typeset
it, the script measures the layout and writes its findings into the DOM, which Chromium
dumps (``--dump-dom``). No browser-automation package is needed. The checks:

- ``overflow``  an element of the main column (``article.bd-article``) reaches past the
  column, or the page scrolls sideways. Content that scrolls inside its own box
  (``overflow-x: auto``, e.g. a wide table or a long code line in a scroll box) is not a
  failure; it is listed as a note (``--strict`` makes it one).
- ``clipped``   an element with ``overflow-x: hidden``/``clip`` cuts off its content.
- ``equation``  a display equation (MathJax ``mjx-container[display]``) wider than the
  space it is given: it runs off the column or into a scroll bar.
- ``figure``    an image in the column is under 250 px tall as rendered (a figure with
  several panel rows needs 250 px per row; the DOM cannot tell rows, so every image must
  reach 250 px) or did not load. Every image's rendered and natural size is reported.
- ``tex``       raw TeX on the page: ``$$``, ``\\(``, ``\\[``, ``\\begin{``, a TeX command
  or ``$...$`` left untypeset outside code, or a MathJax error box.
- ``nbval``     the text ``NBVAL`` (an nbval marker comment shown to the reader).
- ``repr``      an object repr with a memory address (``<... at 0x7f...>``).
- ``mdtable``   a Markdown table printed as plain text in a cell output.

Prints a report per page and exits 1 if any page has a violation.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_math  # noqa: E402  (the Chromium command line, shared)

WIDTH = 1280
MIN_FIGURE_HEIGHT = 250
RESULT_ID = "pvqref-layout-check"
CHECKS = ("overflow", "clipped", "equation", "figure", "tex", "nbval", "repr", "mdtable")

# Runs in the page. It waits for the load event, MathJax's first typeset and the fonts,
# then writes a JSON report into <pre id=RESULT_ID>.
SCRIPT = r"""
<script>
(function () {
  const MIN_FIGURE_HEIGHT = %(min_height)d;
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const squash = s => (s || '').replace(/\s+/g, ' ').trim();
  const short = s => { s = squash(s); return s.length > 90 ? s.slice(0, 87) + '...' : s; };

  async function ready() {
    if (document.readyState !== 'complete')
      await new Promise(r => window.addEventListener('load', r));
    const hasMath = document.querySelector('.math, mjx-container') !== null;
    for (let i = 0; hasMath && i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
      await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
    if (document.fonts) await document.fonts.ready;
    await sleep(300);
  }

  function where(el) {
    const parts = [];
    const cell = el.closest('div.cell');
    if (cell) {
      const cells = Array.from(document.querySelectorAll('article.bd-article div.cell'));
      const part = el.closest('.cell_input') ? 'input' : (el.closest('.cell_output') ? 'output' : '');
      parts.push('code cell ' + (cells.indexOf(cell) + 1) + (part ? ' ' + part : ''));
    }
    const section = el.closest('section');
    if (section) {
      const h = section.querySelector('h1, h2, h3, h4, h5, h6');
      if (h) parts.push('in "' + short(h.textContent.replace(/#$/, '')) + '"');
    }
    return parts.join(' ');
  }

  function tag(el) {
    const cls = typeof el.className === 'string' ? el.className.trim().split(/\s+/).filter(Boolean) : [];
    return '<' + el.tagName.toLowerCase() + cls.map(c => '.' + c).join('') + '>';
  }
  function ox(el) { return getComputedStyle(el).overflowX; }
  function visible(el) {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden';
  }
  const SKIP = 'mjx-assistive-mml, script, style, #%(result_id)s';

  function check() {
    const out = {page: location.pathname.split('/').slice(-2).join('/'), viewport: window.innerWidth,
                 violations: [], notes: [], figures: []};
    const add = (check, el, detail) => out.violations.push({check, where: el ? where(el) : '', detail});
    const note = (el, detail) => out.notes.push({check: 'scrolls', where: where(el), detail});
    const column = document.querySelector('article.bd-article');
    if (!column) { add('overflow', null, 'no main column (article.bd-article) on the page'); return out; }
    const col = column.getBoundingClientRect();
    out.column = Math.round(col.width);

    if (document.documentElement.scrollWidth > window.innerWidth + 1)
      add('overflow', null, 'the page scrolls sideways: ' + document.documentElement.scrollWidth +
          ' px wide in a ' + window.innerWidth + ' px window');

    // Elements reaching past the column, outermost only, outside scroll boxes; scroll boxes
    // and clipping boxes are inspected themselves.
    const walk = (el, insideBox) => {
      for (const child of el.children) {
        if (child.matches(SKIP)) continue;
        if (!visible(child)) { walk(child, insideBox); continue; }
        const r = child.getBoundingClientRect();
        const o = ox(child);
        // MathJax boxes are measured by the typeset formula (below), not by their scroll
        // width, which counts the overhang of italic glyphs.
        const isMath = child.matches('.math, mjx-container');
        const isDisplay = child.matches('div.math, mjx-container[display="true"]');
        if (!insideBox && !isDisplay && (r.right > col.right + 1 || r.left < col.left - 1)) {
          add('overflow', child, tag(child) + ' is ' + Math.round(r.width) +
              ' px wide and reaches ' + Math.round(Math.max(r.right - col.right, col.left - r.left)) +
              ' px past the ' + Math.round(col.width) + ' px column: "' + short(child.textContent) + '"');
          continue;
        }
        if (isMath) continue;
        const over = child.scrollWidth - child.clientWidth;
        if (over > 1 && child.clientWidth > 0) {
          if (o === 'auto' || o === 'scroll') {
            note(child, tag(child) + ' content ' + child.scrollWidth + ' px wide scrolls in a ' + child.clientWidth +
                 ' px box: "' + short(child.textContent) + '"');
            walk(child, true); continue;
          }
          if (o === 'hidden' || o === 'clip') {
            add('clipped', child, tag(child) + ' content ' + child.scrollWidth + ' px wide is cut off at ' +
                child.clientWidth + ' px: "' + short(child.textContent) + '"');
            continue;
          }
        }
        walk(child, insideBox || o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip');
      }
    };
    walk(column, false);

    // Display equations: the typeset formula against the width it is given.
    for (const m of column.querySelectorAll('mjx-container[display="true"]')) {
      const math = m.querySelector('mjx-math') || m;
      const w = math.getBoundingClientRect().width;
      const box = Math.min(m.clientWidth || col.width, col.right - m.getBoundingClientRect().left);
      if (w > box + 1)
        add('equation', m, 'display equation ' + Math.round(w) + ' px wide in ' + Math.round(box) +
            ' px: "' + short(m.querySelector('mjx-assistive-mml') ? m.querySelector('mjx-assistive-mml').textContent : '') + '"');
    }
    for (const e of document.querySelectorAll('mjx-merror'))
      add('tex', e, 'MathJax error: "' + short(e.getAttribute('data-mjx-error') || e.textContent) + '"');

    // Figures.
    for (const img of column.querySelectorAll('img')) {
      const r = img.getBoundingClientRect();
      const fig = {where: where(img), src: img.getAttribute('src').split('/').pop().slice(0, 16),
                   rendered: [Math.round(r.width), Math.round(r.height)],
                   natural: [img.naturalWidth, img.naturalHeight]};
      out.figures.push(fig);
      if (!img.complete || img.naturalWidth === 0)
        add('figure', img, 'image did not load: ' + img.getAttribute('src'));
      else if (r.height < MIN_FIGURE_HEIGHT)
        add('figure', img, 'image rendered ' + fig.rendered.join(' x ') + ' px (natural ' +
            fig.natural.join(' x ') + '), under ' + MIN_FIGURE_HEIGHT + ' px tall');
    }

    // Text checks over every text node of the page body.
    const TEX = [/\$\$/, /\\\(|\\\)/, /\\\[|\\\]/, /\\(begin|end)\{/,
                 /\\(frac|dfrac|sum|prod|int|sqrt|mathrm|mathbf|mathcal|mathbb|operatorname|left|right|cdot|times|leq?|geq?|approx|alpha|beta|gamma|delta|sigma|mu|lambda|theta|infty|binom|text|hat|tilde|lfloor|rfloor|lceil|rceil|lVert|rVert|langle|rangle|ldots|cdots|quad|partial|nabla|boldsymbol)(?![A-Za-z])/,
                 /\$[^$\s][^$\n]*[\\^_{}][^$\n]*\$/];
    const seen = {tex: new Set(), nbval: new Set(), repr: new Set()};
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!el || el.closest('script, style, noscript, mjx-container, #%(result_id)s')) continue;
      const text = n.nodeValue;
      const key = el.closest('div.cell, p, li, h1, h2, h3, h4, h5, h6, td, th, dt, dd, pre, a') || el;
      if (/NBVAL/.test(text) && !seen.nbval.has(key)) {
        seen.nbval.add(key);
        add('nbval', el, '"' + short(text.slice(Math.max(0, text.indexOf('NBVAL') - 30), text.indexOf('NBVAL') + 40)) + '"');
      }
      const addr = text.match(/.{0,40}\bat 0x[0-9a-fA-F]{4,}.{0,5}/);
      if (addr && !seen.repr.has(key)) { seen.repr.add(key); add('repr', el, '"' + short(addr[0]) + '"'); }
      const inCode = el.closest('.cell_input, code, kbd, samp, textarea') ||
                     (el.closest('pre') && !el.closest('.cell_output'));
      if (!inCode && !seen.tex.has(key)) {
        for (const re of TEX) {
          const m = text.match(re);
          if (m) {
            seen.tex.add(key);
            const i = text.indexOf(m[0]);
            add('tex', el, 'untypeset TeX ' + JSON.stringify(m[0].slice(0, 30)) + ' in "' +
                short(text.slice(Math.max(0, i - 40), i + 50)) + '"');
            break;
          }
        }
      }
    }

    // Markdown tables printed as text.
    for (const pre of column.querySelectorAll('.cell_output pre')) {
      const lines = pre.textContent.split('\n');
      if (lines.some(l => /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$/.test(l)) &&
          lines.some(l => /^\s*\|.*\|\s*$/.test(l)))
        add('mdtable', pre, 'a Markdown table printed as plain text: "' + short(lines.find(l => /\|/.test(l))) + '"');
    }
    return out;
  }

  function report(res) {
    const pre = document.createElement('pre');
    pre.id = '%(result_id)s';
    pre.textContent = JSON.stringify(res);
    document.body.appendChild(pre);
  }
  ready().then(() => { try { report(check()); } catch (e) { report({error: String(e && e.stack || e)}); } },
               e => report({error: 'page did not get ready: ' + e}));
})();
</script>
""" % {"min_height": MIN_FIGURE_HEIGHT, "result_id": RESULT_ID}


def pages_of(site: Path) -> list[Path]:
    """The book's pages: every chapter and page under book/, and the landing page."""
    return [site / "index.html", *sorted((site / "book").glob("*.html"))]


def redirect_of(page: Path) -> str | None:
    m = re.match(r'\s*<meta http-equiv="Refresh" content="0; url=([^"]+)"', page.read_text())
    return m.group(1) if m else None


def measure(page: Path) -> dict:
    """Open a copy of ``page`` (with the script added) in Chromium and return its report."""
    text = page.read_text()
    page.write_text(text.replace("</body>", SCRIPT + "</body>", 1))
    dom = check_math.run(page, "--dump-dom", f"--window-size={WIDTH},1000")
    m = re.search(rf'<pre id="{RESULT_ID}"[^>]*>(.*?)</pre>', dom, flags=re.DOTALL)
    if not m:
        return {"error": "the page script reported nothing (Chromium output "
                         f"{len(dom)} characters): increase --virtual-time-budget?"}
    return json.loads(html.unescape(m.group(1)))


def format_report(name: str, res: dict, strict: bool) -> list[str]:
    lines = []
    if "error" in res:
        return [f"{name}: ERROR {res['error']}"]
    bad = res["violations"] + (res["notes"] if strict else [])
    notes = "" if strict else f", {len(res['notes'])} note(s)"
    lines.append(f"{name}: {len(bad)} violation(s){notes}; "
                 f"viewport {res['viewport']} px, column {res.get('column', '?')} px, "
                 f"{len(res['figures'])} image(s)")
    for v in bad:
        lines.append(f"  [{v['check']}] {v['where'] + ': ' if v['where'] else ''}{v['detail']}")
    if not strict:
        for v in res["notes"]:
            lines.append(f"  (note) {v['where'] + ': ' if v['where'] else ''}{v['detail']}")
    for f in res["figures"]:
        lines.append(f"  (image) {f['where']}: rendered {f['rendered'][0]} x {f['rendered'][1]} px, "
                     f"natural {f['natural'][0]} x {f['natural'][1]}")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", default="_build/html", help="the built book")
    parser.add_argument("--json", help="also write the full report as JSON to this file")
    parser.add_argument("--strict", action="store_true",
                        help="content that scrolls inside its own box is a violation too")
    args = parser.parse_args(argv)
    site = Path(args.site)
    if not (site / "book").is_dir():
        print(f"{site}/book does not exist: build the book first (`make book`)")
        return 1
    reports, failed = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "html"
        shutil.copytree(site, copy)
        for page in pages_of(copy):
            name = page.relative_to(copy).as_posix()
            if (target := redirect_of(page)) is not None:
                print(f"{name}: redirects to {target} (checked there)")
                continue
            res = reports[name] = measure(page)
            bad = "error" in res or res["violations"] or (args.strict and res["notes"])
            failed += bool(bad)
            print("\n".join(format_report(name, res, args.strict)))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    print(f"{failed} of {len(reports)} page(s) with violations" if failed
          else f"all {len(reports)} pages pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
