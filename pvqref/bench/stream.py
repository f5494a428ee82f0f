"""Peak memory against model size: the streamed quantizer and the in-memory one (the
command-line script is ``benchmarks/bench_stream.py``).

For each size, a randomly initialised LLaMA (its perplexity means nothing; its memory
does) is generated on the spot and saved in fp16 shards of 200 MB. Then, each in a fresh
process so that its peak resident memory (ru_maxrss) is its own:

- "streamed": :func:`pvqref.stream.quantize_checkpoint` from the shards, then
  :func:`pvqref.packed.write`;
- "in memory": ``from_pretrained`` in fp32, :func:`pvqref.pipeline.quantize_model`
  (in place), then :func:`pvqref.packed.save`.

The method is round-to-nearest at 4.25 bits (data-free, seconds per block), so that the
curve shows what the two paths hold, not a method's work; calibration activations add
windows x tokens x hidden x 4 bytes twice to either path.

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import os
import tempfile
import time

from . import command_line, in_fresh_processes, peak_rss_gb, save

SIZES = {                     # hidden, intermediate, blocks, heads, kv heads
    "135M": (576, 1536, 30, 9, 3),
    "0.5B": (1024, 4096, 22, 16, 8),
    "1.1B": (2048, 5632, 22, 32, 4),
}
VOCAB = 49152
METHOD, BPW = "rtn", 4.25


def _config(size: str):
    from transformers import LlamaConfig
    hidden, inter, blocks, heads, kv = SIZES[size]
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=blocks, num_attention_heads=heads,
                       num_key_value_heads=kv, tie_word_embeddings=True)


def make_checkpoint(size: str, folder: str) -> int:
    """Save a random LLaMA of ``size`` in fp16 shards; returns its parameter count."""
    import torch
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(size)).to(torch.float16)
    model.save_pretrained(folder, max_shard_size="200MB")
    return sum(p.numel() for p in model.parameters())


def quantize_case(path: str, folder: str, out: str) -> dict:
    """Quantize the checkpoint ``folder`` by one path; seconds and peak RSS."""
    import torch
    torch.set_num_threads(1)
    from .. import packed, pipeline, stream
    start = time.perf_counter()
    if path == "streamed":
        packed.write(*stream.quantize_checkpoint(folder, METHOD, BPW), out)
    else:
        from transformers import LlamaForCausalLM
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        q, reports = pipeline.quantize_model(model, METHOD, BPW, None, inplace=True,
                                             keep_codes=True)
        packed.save(q, reports, out)
    return {"path": path, "seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb()}


def table(rows: list[dict]) -> str:
    """Markdown table of a run."""
    lines = ["| model | parameters | fp16 checkpoint (GB) | path | peak RSS (GB) | minutes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['parameters'] / 1e9:.2f} B | "
                     f"{r['checkpoint_gb']:.2f} | {r['path']} | {r['peak_rss_gb']:.2f} | "
                     f"{r['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """The command line of ``benchmarks/bench_stream.py``."""
    args, load = command_line("stream", __doc__, argv)
    settings = {"method": METHOD, "bpw": BPW, "shard_mb": 200, "threads": 1}
    rows = []
    for size in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "ckpt")
            [params] = in_fresh_processes(make_checkpoint, [(size, ckpt)])
            gb = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt)) / 1e9
            for path in ("streamed", "in memory"):
                out = os.path.join(tmp, path.replace(" ", "-"))
                [row] = in_fresh_processes(quantize_case, [(path, ckpt, out)])
                rows.append({"size": size, "parameters": params, "checkpoint_gb": gb, **row})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                if args.save:
                    save("stream", rows, settings, load)
