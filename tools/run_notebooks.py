"""Re-execute notebooks in place and store their outputs, reproducibly.

    python tools/run_notebooks.py book/pyramid.ipynb [more.ipynb ...]

Unlike ``jupyter execute --inplace`` this records no execution timestamps, so a
re-run that computes the same numbers gives a clean ``git diff``. Execution counts
are renumbered 1..n, stream chunks are merged and the kernel metadata is normalised.
The file is written atomically (temp file, then rename); a failing cell aborts and
leaves the old file.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stdout (or stderr) chunks: how a stream is split depends on timing."""
    merged = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None
                and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
            prev["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def run(path: Path, timeout: int = 1200) -> float:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = KERNELSPEC
    env_setdefaults = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    for key, value in env_setdefaults.items():
        os.environ.setdefault(key, value)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    count = 0
    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = coalesce_streams(cell.outputs)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            count += 1
            cell.execution_count = count
            for out in cell.get("outputs", []):
                if "execution_count" in out:
                    out["execution_count"] = count
    nb.metadata.pop("widgets", None)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.replace(tmp, path)
    return elapsed


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for name in argv:
        path = Path(name).resolve()
        elapsed = run(path)
        print(f"{path.relative_to(ROOT)}: executed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
