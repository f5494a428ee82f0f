"""Check that a built page shows typeset math with the network off, and screenshot it.

    python tools/check_math.py _build/html/book/intro.html _build/math-screenshot.png

Runs headless Chromium (Debian package ``chromium``) with every host name mapped to
nothing, so a page that needs a CDN for MathJax cannot get it. MathJax 3 replaces each
TeX span by an ``<mjx-container>`` element; the check passes when the rendered DOM has
such elements and no TeX is left untypeset. A screenshot is saved for a human look.
Exit code 0 on success, 1 with a message otherwise.
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000",
         "--hide-scrollbars"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("chromium not found: install it with `apt-get install -y chromium` "
             "(`make check-math` does this)")


def run(page: Path, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *extra,
                              page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120)
    return out.stdout


def main(page: str, screenshot: str) -> int:
    page_path = Path(page)
    if not page_path.is_file():
        print(f"{page} does not exist: build the book first (`make book`)")
        return 1
    dom = run(page_path, "--dump-dom")
    typeset = len(re.findall(r"<mjx-container", dom))
    raw = re.findall(r"\\\(|\\\[|\$\$", re.sub(r"<script.*?</script>", "", dom, flags=re.DOTALL))
    shot = Path(screenshot).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    run(page_path, f"--screenshot={shot}", "--window-size=1200,2400")
    print(f"{page}: {typeset} typeset equations, {len(raw)} untypeset TeX delimiters; "
          f"screenshot {shot} ({shot.stat().st_size if shot.exists() else 0} bytes)")
    if typeset == 0 or raw:
        print("FAIL: math is not typeset offline")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
