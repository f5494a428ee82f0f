"""The end-to-end run of the final chapter: quantize SmolLM2, write the packed model,
reload it, evaluate it (the command-line script is ``benchmarks/bench_llama.py``).

Each case runs in a fresh process (its peak resident memory is its own): the
whole-model quantizer (:func:`pvqref.pipeline.quantize_model`, 32 x 512 calibration
tokens, seed 0, input rotations) with ``keep_codes``, :func:`pvqref.packed.save` into a
temporary folder, :func:`pvqref.packed.load`, then under :mod:`pvqref.evaluate`'s protocol
on the evaluation split: perplexity on the first 20 windows of 512 tokens and on the same
tokens as 5 windows of 2048, and top-1 agreement and mean KL divergence to the
unquantized model on the 512-token windows. Bits per weight are counted on disk
(:func:`pvqref.packed.inspect`).

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import os
import tempfile
import time

from . import command_line, in_fresh_processes, peak_rss_gb, save

CALIBRATION = (32, 512)
EVALUATION = (20, 512)
LONG = (5, 2048)                  # the same 10 240 tokens as 5 windows of 2048
GRID = [("pvq-h", 3.25)]


def evaluate_model(model, reference, ids) -> dict:
    """Perplexities at 512 and 2048 tokens, top-1 agreement and KL to ``reference`` (the
    512-token perplexity and the agreement from one pass: :func:`pvqref.evaluate.compare`)."""
    from .. import evaluate
    out = evaluate.compare(model, reference, ids, EVALUATION[1], EVALUATION[0])
    return {"perplexity": out["perplexity"],
            "perplexity_2048": evaluate.perplexity(model, ids, LONG[1], LONG[0]),
            "top1": out["top1"], "kl": out["kl"]}


def model_case(method: str, bpw: float) -> dict:
    """Quantize, pack, reload and evaluate one (method, rate); see the module docstring."""
    import copy

    import torch
    torch.set_num_threads(int(os.environ.get("PVQREF_THREADS", "1")))
    from .. import data, packed, pipeline
    from ..hessian import calibration
    reference, tok = data.load_model()
    texts = data.load_texts()
    windows = calibration.calibration_windows(tok, texts.joined("calibration"), *CALIBRATION,
                                              seed=0)
    start = time.perf_counter()
    model, reports = pipeline.quantize_model(copy.deepcopy(reference), method, bpw, windows,
                                             inplace=True, keep_codes=True)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = packed.save(model, reports, os.path.join(tmp, "packed"), tok)
        peak_quantize = peak_rss_gb()
        info = packed.inspect(path)
        del model, reports
        loaded = packed.load(path)
    ids = torch.tensor(tok(texts.joined("evaluation"), add_special_tokens=False)["input_ids"])
    row = {"method": method, "bpw_asked": bpw, "bpw": info["bits_per_weight_claimed"],
           "bpw_on_disk": info["bits_per_weight_on_disk"],
           "folder_mb": info["folder_bytes"] / 1e6, "fp16_mb": info["fp16_model_bytes"] / 1e6,
           "seconds": seconds, "peak_rss_gb": peak_quantize,
           "threads": torch.get_num_threads()}
    row.update(evaluate_model(loaded, reference, ids))
    return row


def unquantized_case() -> dict:
    """The unquantized model under the same evaluation (agreement with itself is 1, 0)."""
    import torch
    from .. import data
    model, tok = data.load_model()
    ids = torch.tensor(tok(data.load_texts().joined("evaluation"),
                           add_special_tokens=False)["input_ids"])
    return {"method": "unquantized", "bpw": 16.0, **evaluate_model(model, model, ids)}


def table(rows: list[dict]) -> str:
    """Markdown table of a run."""
    lines = ["| method | bpw (disk) | ppl 512 | ppl 2048 | top-1 | KL | minutes | RSS (GB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        minutes = f"{r['seconds'] / 60:.1f}" if "seconds" in r else "-"
        rss = f"{r['peak_rss_gb']:.2f}" if "peak_rss_gb" in r else "-"
        lines.append(f"| {r['method']} | {r.get('bpw_on_disk', r['bpw']):.3f} | "
                     f"{r['perplexity']:.3f} | {r['perplexity_2048']:.3f} | {r['top1']:.4f} | "
                     f"{r['kl']:.4f} | {minutes} | {rss} |")
    return "\n".join(lines)


def _case(method=None, bpw=None) -> dict:
    return unquantized_case() if method is None else model_case(method, bpw)


def main(argv=None) -> None:
    """The command line of ``benchmarks/bench_llama.py``."""
    args, load = command_line("llama", __doc__, argv)
    settings = {"calibration": list(CALIBRATION), "evaluation": list(EVALUATION),
                "long": list(LONG), "seed": 0, "rotation": "input",
                "threads": int(os.environ.get("PVQREF_THREADS", "1"))}
    rows = []
    for row in in_fresh_processes(_case, [()] + GRID):
        rows.append(row)
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.save:
            save("llama", rows, settings, load)


# -- what the chapter renders from the recorded runs ----------------------------------------

def comparison(ours: dict, peers: dict, rates=(2.25, 3.25, 4.25)) -> list[dict]:
    """One list of rows (library, method, setting, bpw as stored, perplexity) from the
    recorded whole-model runs of pvqref (``hessian_models``: input rotation, the rates
    asked) and of the peer libraries (``peers``), best perplexity first within a rate."""
    rows = [{"library": "pvqref", "method": r["method"], "setting": f"{r['bpw_asked']} asked",
             "bpw": r["bpw"], "perplexity": r["perplexity"]}
            for r in ours["rows"] if r["rotation"] == "input" and r["bpw_asked"] in rates]
    rows += [{"library": r["library"], "method": r["library"], "setting": r["setting"],
              "bpw": r["bpw_stored"], "perplexity": r["perplexity"]}
             for r in peers["rows"] if r["library"] != "unquantized"]
    return sorted(rows, key=lambda r: (r["bpw"], r["perplexity"]))


def pareto(rows: list[dict]) -> list[dict]:
    """The rows no other row beats at once in bits and perplexity (lowest bpw first)."""
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: (r["bpw"], r["perplexity"])):
        if r["perplexity"] < best:
            front.append(r)
            best = r["perplexity"]
    return front


def pareto_figure(rows: list[dict], unquantized: float):
    """Perplexity / unquantized (log scale) against bits per weight, one marker per
    library or method, the Pareto front drawn through."""
    from .. import book
    fig, ax = book.figure(height=3.6)
    markers = {"pvq-h": "o", "pvq": "s", "gptq": "^", "rtn": "v", "HQQ": "D",
               "GPTQModel": "P", "bitsandbytes": "X"}
    for key in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == key]
        label = key if pts[0]["library"] != "pvqref" else f"pvqref {key}"
        ax.scatter([r["bpw"] for r in pts], [r["perplexity"] / unquantized for r in pts],
                   marker=markers.get(key, "o"), label=label, s=36)
    front = pareto(rows)
    ax.plot([r["bpw"] for r in front], [r["perplexity"] / unquantized for r in front],
            color="0.5", lw=1, zorder=0, label="Pareto front")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight, as stored")
    ax.set_ylabel("perplexity / unquantized")
    ax.legend(ncols=2, loc="upper right")
    return fig


LLAMA_CONFIGS = {            # the published configs of the LLaMA-2 family (hidden,
    "Llama-2-7B": (4096, 11008, 32, 32000),        # intermediate, blocks, vocabulary)
    "Llama-2-13B": (5120, 13824, 40, 32000),
    "Llama-2-70B": (8192, 28672, 80, 32000),
}


def memory_estimate(hidden: int, intermediate: int, blocks: int, vocab: int,
                    windows: int = 128, tokens: int = 2048, bpw: float = 3.25,
                    kv_fraction: float = 1.0) -> dict:
    """GB of what the sequential quantizer holds, estimated from a LLaMA's shape: the
    model in fp16, one decoder block in fp32 while it is quantized, the calibration
    activations entering and leaving that block (fp32, windows x tokens x hidden, twice),
    the largest float64 Hessian (intermediate^2), and the packed model at ``bpw``.
    ``kv_fraction``: the k/v projections' share of the hidden size (1 without GQA)."""
    attention = hidden * hidden * (2 + 2 * kv_fraction)
    block = attention + 3 * hidden * intermediate
    params = blocks * block + 2 * vocab * hidden
    gb = 1e9
    return {"parameters_b": params / 1e9, "fp16_gb": 2 * params / gb,
            "block_fp32_gb": 4 * block / gb,
            "activations_gb": 2 * 4 * windows * tokens * hidden / gb,
            "hessian_gb": 8 * intermediate ** 2 / gb,
            "packed_gb": (blocks * block * bpw / 8 + 2 * 2 * vocab * hidden) / gb}
