"""The command line, ``python -m pvqref`` or ``pvqref``: quantize, eval, generate, inspect.

    pvqref quantize --method pvq-h --bpw 3.25 --out smollm2-pvq-h-3.25
    pvqref eval smollm2-pvq-h-3.25            # perplexity at 512 and 2048, top-1, KL
    pvqref generate smollm2-pvq-h-3.25 --prompt "The capital of France is"
    pvqref inspect smollm2-pvq-h-3.25         # where the bits go
    pvqref assets                             # locate the embedded model and texts
    pvqref quantize --method pvq-h+rsavq --bpw 3.25 --out smollm2-rsavq   # RSAVQ on PVQ-H

``quantize`` reads a local LLaMA checkpoint folder (``--model``) or, by default, the
embedded SmolLM2-135M-Instruct (:mod:`pvqref.data`), calibrates on the calibration split
of the embedded texts, and writes a packed model folder (:mod:`pvqref.packed`). ``eval``
compares a packed model with the model it came from (or ``--reference``) under
:mod:`pvqref.evaluate`'s protocol on the evaluation split. A user mistake (a missing
folder, a model that is not a LLaMA, a size a method cannot take, a corrupt file) is one
line on stderr and exit status 2, no traceback (set PVQREF_DEBUG=1 for one).

RSAVQ (``--method <base>+rsavq``, or ``rsavq`` for the faithful one on k-means VQ) needs
the Fisher of every layer from gradients through the whole model, so it quantizes in
memory rather than block by block from the checkpoint (:mod:`pvqref.rsavq.quantize`).

Chapter: Quantizing a real LLaMA model (book/llama.ipynb).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EMBEDDED = "embedded:SmolLM2-135M-Instruct"
RSAVQ_SUFFIX = "+rsavq"       # pvq-h+rsavq: RSAVQ's EDSG and WCSG on a PVQ method
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")   # placement.STRATEGIES


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line."""


def source_folder(folder=None):
    """(checkpoint folder, tokenizer) of a local LLaMA checkpoint, or of the embedded
    SmolLM2 (its fp32 cache) for None / EMBEDDED; UserError for a missing folder, one
    without a config, a model that is not a LLaMA, or one already quantized."""
    from transformers import AutoTokenizer
    if folder in (None, EMBEDDED):
        from . import data
        path = data.ensure_model_cache()
        return path, AutoTokenizer.from_pretrained(path / "tokenizer")
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"model folder {path} does not exist")
    try:
        config = json.loads((path / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise UserError(f"{path} has no readable config.json ({err})") from None
    if config.get("model_type") != "llama":
        raise UserError(f"{path} holds a {config.get('model_type')!r} model, not a LLaMA "
                        f"(model_type 'llama')")
    if "quantization_config" in config:
        raise UserError(f"{path} is already quantized "
                        f"({config['quantization_config'].get('quant_method')})")
    return path, AutoTokenizer.from_pretrained(path)


def load_source(folder=None, device_map=None):
    """(model, tokenizer) of :func:`source_folder`'s checkpoint, the model in fp32; with
    ``device_map`` placed over the devices (a folder by transformers as it loads, so that
    the whole model never sits in CPU memory)."""
    import torch
    from transformers import AutoModelForCausalLM
    if folder in (None, EMBEDDED):
        from . import data, placement
        model, tok = data.load_model()
        if device_map:
            model = placement.dispatch(model, placement.plan(model, device_map))
        return model, tok
    path, tok = source_folder(folder)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                device_map=device_map).eval(), tok


def _texts_ids(tokenizer, split: str):
    import torch
    from . import data
    text = data.load_texts().joined(split)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])


def cmd_quantize(args) -> int:
    import torch
    from tqdm.auto import tqdm
    from . import packed, pipeline, stream
    from .hessian import calibration
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists (add --overwrite to replace it)")
    folder, tok = source_folder(args.model)
    name = "vq" + RSAVQ_SUFFIX if args.method == "rsavq" else args.method   # the faithful one
    rsavq = name.endswith(RSAVQ_SUFFIX)
    method = name.removesuffix(RSAVQ_SUFFIX)
    windows = None
    if method in pipeline.HESSIAN_METHODS or rsavq:
        from . import data
        windows = calibration.calibration_windows(
            tok, data.load_texts().joined("calibration"), args.calibration,
            args.calibration_tokens, seed=args.seed).to(args.device)
    rotation = None if args.rotation == "none" else args.rotation
    options = dict(seed=args.seed, group=args.group, L=args.L, gain_bits=args.gain_bits,
                   rotation=rotation)
    info = {"source": EMBEDDED if args.model is None else str(Path(args.model).resolve()),
            "calibration": None if windows is None else list(windows.shape), **options}
    with tqdm(desc=f"{args.method} {args.bpw} bpw", unit="block", disable=args.quiet) as bar:
        def progress(b, reports):
            bar.update(1)
        if rsavq:                           # gradients through the whole model: in memory
            from .rsavq import quantize as rq
            settings = rq.RSAVQ(edsg=not args.no_edsg, lam=args.lam, wcsg=not args.no_wcsg,
                                rule=args.wcsg_rule, groups=args.wcsg_groups)
            info.update(method=args.method, rsavq=settings.to_dict())
            model, _ = load_source(args.model)
            if rotation == "residual":
                raise UserError("RSAVQ is implemented with input rotations only (--rotation "
                                "input or none)")

            def fisher_bar(rows):
                return tqdm(rows, desc="Fisher (backward per window)", unit="window",
                            disable=args.quiet, leave=False)
            qmodel, reports = rq.quantize_model(
                model.to(args.device), method, args.bpw, windows, settings, fisher_bar,
                inplace=True, keep_codes=True, progress=progress, **options)
            packed.save(qmodel.to("cpu"), reports, out, tok, overwrite=args.overwrite,
                        info=info)
        elif rotation == "residual":        # rotates the whole model: in memory
            info["residual_seed"] = args.seed + pipeline.RESIDUAL_SEED
            model, _ = load_source(args.model)
            qmodel, reports = pipeline.quantize_model(
                model.to(args.device), args.method, args.bpw, windows, inplace=True,
                keep_codes=True, progress=progress, **options)
            packed.save(qmodel.to("cpu"), reports, out, tok, overwrite=args.overwrite,
                        info=info)
        else:                               # block by block from the checkpoint files
            config, reports, state = stream.quantize_checkpoint(
                folder, args.method, args.bpw, windows, device=args.device,
                progress=progress, **options)
            state = {k: v.to(torch.float16) if v.is_floating_point() else v
                     for k, v in state.items()}
            packed.write(config, reports, state, out, tok, overwrite=args.overwrite,
                         info=info)
    print(f"wrote {out}: {pipeline.mean_bits_per_weight(reports):.3f} bits per weight "
          f"({len(reports)} layers)")
    if args.act_bits is not None:
        model = packed.load(out, args.device, activations=False)
        act = _activation_config(args, model, tok)
        packed.set_activations(out, act)
        print(f"activations: {_describe(act, model)}")
    return 0


def _activation_config(args, model, tok):
    """The activation config the --act-* options ask for, calibrated on ``model``."""
    from . import activations, data
    from .hessian import calibration
    windows = None
    if args.act_method == "pvq":
        windows = calibration.calibration_windows(
            tok, data.load_texts().joined("calibration"), activations.CALIBRATION_WINDOWS,
            512, seed=args.seed)
    bits = args.act_bits
    if args.act_method == "rtn":
        if not float(bits).is_integer():
            raise UserError(f"--act-bits for RTN must be a whole number of bits, got {bits}")
        bits = int(bits)
    return activations.calibrate(model, windows, bits, args.act_method,
                                 rotate=not args.act_no_rotate, seed=args.seed)


def _describe(act, model) -> str:
    from . import activations
    widths = sorted({m.in_features for m in activations.decoder_linears(model).values()})
    bits = ", ".join(f"{act.bits_per_activation(n):.3f} at width {n}" for n in widths)
    return (f"{act.method} at {act.bits:g} bits{'' if act.rotate else ', unrotated'}; "
            f"stored per activation with the fp16 norm or scale: {bits}")


def _load_packed(args):
    """The packed model of ``args.path`` on ``--device``, or over ``--device-map``."""
    from . import packed
    if args.device_map:
        return packed.load(args.path, device_map=args.device_map)
    return packed.load(args.path, args.device)


def cmd_eval(args) -> int:
    from . import activations, evaluate
    model = _load_packed(args)
    qc = model.config.quantization_config
    reference = args.reference or qc.get("source", EMBEDDED)
    ref_model, tok = load_source(reference, args.device_map)
    if not args.device_map:
        ref_model.to(args.device)
    if args.weights_only:
        activations.disable(model)
    elif args.act_bits is not None:
        activations.enable(model, _activation_config(args, model, tok))
    act = getattr(model, "pvqref_activations", None)
    ids = _texts_ids(tok, "evaluation")
    rows = {"path": str(args.path), "reference": reference,
            "bits_per_weight": qc["bits_per_weight"],
            "activations": None if act is None else act.config.to_dict()}
    agree = evaluate.compare(model, ref_model, ids, 512, args.windows)   # one pass each
    for window in args.context:
        n = max(1, args.windows * 512 // window)
        rows[f"perplexity_{window}"], rows[f"reference_perplexity_{window}"] = (
            (agree["perplexity"], agree["reference_perplexity"]) if window == 512 else
            (evaluate.perplexity(model, ids, window, n),
             evaluate.perplexity(ref_model, ids, window, n)))
    rows.update(top1=agree["top1"], kl=agree["kl"])
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for window in args.context:
        q, r = rows[f"perplexity_{window}"], rows[f"reference_perplexity_{window}"]
        print(f"perplexity at {window} tokens: {q:.3f} (reference {r:.3f}, x{q / r:.3f})")
    print(f"top-1 agreement with the reference: {rows['top1']:.4f}; mean KL divergence "
          f"{rows['kl']:.4f} nats per token")
    print("activations: " + ("not quantized" if act is None else _describe(act.config, model)))
    return 0


def cmd_generate(args) -> int:
    import torch
    from transformers import AutoTokenizer
    model = _load_packed(args)
    tok = AutoTokenizer.from_pretrained(args.path)
    prompt = args.prompt
    if args.chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    torch.manual_seed(args.seed)
    sample = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} \
        if args.sample else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=args.max_new_tokens,
                             pad_token_id=tok.eos_token_id, **sample)
    print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return 0


def cmd_inspect(args) -> int:
    from . import packed
    info = packed.inspect(args.path)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['quantized_weights']:,} quantized weights: "
          f"{info['bits_per_weight_on_disk']:.4f} bits per weight on disk "
          f"(the format claims {info['bits_per_weight_claimed']:.4f})")
    for kind, b in info["bits_per_weight_by_kind"].items():
        print(f"  {kind:<11} {info['bytes_by_kind'][kind]:>12,} bytes  {b:.4f} bits/weight")
    print(f"unquantized tensors {info['unquantized_bytes']:,} bytes, header "
          f"{info['header_bytes']:,} bytes; folder {info['folder_bytes']:,} bytes against "
          f"{info['fp16_model_bytes']:,} for the model in fp16 "
          f"({info['folder_bytes'] / info['fp16_model_bytes']:.3f}x)")
    return 0


def cmd_assets(args) -> int:
    from . import data
    try:
        summary = data.check_assets()
    except data.AssetMissingError as err:
        raise UserError(str(err)) from None
    print(json.dumps(summary, indent=1))
    return 0


def parser():
    """The argument parser of every subcommand."""
    from .pipeline import METHODS
    RSAVQ_BASES = tuple(m for m in METHODS if m.startswith("pvq") or m == "vq")
    p = argparse.ArgumentParser(prog="pvqref", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize a LLaMA and write a packed model folder")
    q.add_argument("--model", help="a local LLaMA checkpoint folder (default: the embedded "
                                   "SmolLM2-135M-Instruct)")
    q.add_argument("--method", default="pvq-h",
                   choices=METHODS + tuple(m + RSAVQ_SUFFIX for m in RSAVQ_BASES) + ("rsavq",),
                   help="a method of pvqref.pipeline; +rsavq adds RSAVQ's EDSG and WCSG; "
                        "rsavq is the faithful RSAVQ (vq+rsavq)")
    q.add_argument("--bpw", type=float, default=3.25, help="bits per weight (default 3.25)")
    q.add_argument("--calibration", type=int, default=32, help="calibration windows")
    q.add_argument("--calibration-tokens", type=int, default=512, help="tokens per window")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="cpu")
    q.add_argument("--rotation", default="input", choices=("input", "residual", "none"))
    q.add_argument("--group", type=int, default=128, help="group of the scalar methods")
    q.add_argument("--L", type=int, default=64, help="PVQ group size")
    q.add_argument("--gain-bits", type=int, default=3)
    q.add_argument("--lam", type=float, default=0.05, help="RSAVQ's EDSG step, a fraction "
                   "of each weight's norm (default 0.05)")
    q.add_argument("--no-edsg", action="store_true", help="RSAVQ without EDSG")
    q.add_argument("--no-wcsg", action="store_true", help="RSAVQ without WCSG")
    q.add_argument("--wcsg-rule", default="lagrange", choices=("lagrange", "paper"))
    q.add_argument("--wcsg-groups", type=int, default=4)
    _activation_options(q, "record an activation quantization in the packed model: ")
    q.add_argument("--out", required=True, help="the packed model folder to write")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="perplexity, top-1 agreement and KL to the reference")
    e.add_argument("path")
    e.add_argument("--reference", help="unquantized model folder (default: the source)")
    e.add_argument("--windows", type=int, default=20, help="windows of 512 tokens (the "
                   "same tokens are cut into 2048-token windows)")
    e.add_argument("--context", type=int, nargs="+", default=[512, 2048])
    e.add_argument("--device", default="cpu")
    e.add_argument("--device-map", choices=DEVICE_MAPS, help="place whole decoder blocks "
                   "over every GPU with accelerate (instead of --device)")
    _activation_options(e, "")
    e.add_argument("--weights-only", action="store_true", help="ignore the activation "
                   "quantization the packed model records")
    e.add_argument("--seed", type=int, default=0, help="seed of the activation rotation")
    e.add_argument("--json", action="store_true")
    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("path")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    g.add_argument("--device", default="cpu")
    g.add_argument("--device-map", choices=DEVICE_MAPS, help="place whole decoder blocks "
                   "over every GPU with accelerate (instead of --device)")
    i = sub.add_parser("inspect", help="bits broken down by indices, gains, norms, side data")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    sub.add_parser("assets", help="locate the model and text assets, build the fp32 cache, "
                                  "print a summary")
    return p


def _activation_options(p, prefix: str) -> None:
    p.add_argument("--act-bits", type=float, help=prefix + "quantize the input of every "
                   "linear layer at this many bits per activation (pvqref.activations)")
    p.add_argument("--act-method", default="pvq", choices=("pvq", "rtn"),
                   help="PVQ (default; rotated) or per-token round-to-nearest")
    p.add_argument("--act-no-rotate", action="store_true", help="RTN without the rotation")


COMMANDS = {"quantize": cmd_quantize, "eval": cmd_eval, "generate": cmd_generate,
            "inspect": cmd_inspect, "assets": cmd_assets}


def main(argv=None) -> int:
    """Run one subcommand; a user mistake is one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    from .packed import PackedModelError
    try:
        return COMMANDS[args.command](args)
    except (UserError, PackedModelError, FileExistsError, FileNotFoundError, ValueError,
            TypeError) as err:
        if os.environ.get("PVQREF_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
