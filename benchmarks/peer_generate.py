"""Greedy generation by the best peer at the rate nearest 3.25 bits per weight, for the final
chapter's side-by-side (GPTQModel 3-bit, group 128, as ``benchmarks/peer_models.py`` wrote
it into $PEERS_SCRATCH/gptqmodel-3b-g128).

Runs in the GPTQModel peer venv (set-up: ``benchmarks/peer_models.py``'s docstring):

    /work/peers/gptq-venv/bin/python benchmarks/peer_generate.py [--save]

The fp32 SmolLM2 of ``pvqref.data`` gets each quantized layer's own dequantized weight
(GPTQModel's ``dequantize_weight``, as the perplexity run does), then the chapter's prompt
is continued greedily for 30 tokens. ``--save`` writes results/peer_generations.json.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from gptqmodel import BACKEND, GPTQModel  # noqa: E402
from gptqmodel.version import __version__ as GPTQMODEL_VERSION  # noqa: E402

from pvqref import bench, data  # noqa: E402

PROMPT, NEW_TOKENS = "The history of the Roman Empire", 30
SCRATCH = Path(os.environ.get("PEERS_SCRATCH", "/work/peers/scratch"))
SETTING = "3b-g128"


def main():
    args, load = bench.command_line("peer_generations", __doc__)
    torch.set_num_threads(1)
    model, tok = data.load_model()
    loaded = GPTQModel.load(str(SCRATCH / f"gptqmodel-{SETTING}"), backend=BACKEND.TORCH,
                            device="cpu")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            W = loaded.model.get_submodule(name).dequantize_weight().to(torch.float32).t()
            module.weight.data = W.contiguous()
    x = tok(PROMPT, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, x["input_ids"].shape[1]:])
    row = {"library": "GPTQModel", "version": GPTQMODEL_VERSION, "setting": SETTING,
           "prompt": PROMPT, "new_tokens": NEW_TOKENS, "text": text}
    print(repr(text))
    if args.save:
        print("saved", bench.save("peer_generations", [row], {"greedy": True}, load))


if __name__ == "__main__":
    main()
