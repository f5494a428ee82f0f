"""Write book/activations.ipynb from the cell list below (no outputs; tools/run_notebooks.py
executes it and stores them). Kept so that the chapter's source reads as one file.
With --keep-outputs only the sources of the executed notebook are replaced."""

import sys
from pathlib import Path

from chapter_builder import Chapter

CHAPTER = Chapter("activations")
md, code = CHAPTER.md, CHAPTER.code

md(r"""
# PVQ for activations

Every chapter so far quantized weights, which are fixed: a quantizer may take minutes
per layer. The PVQ-for-LLMs paper {cite}`vanderouderaa2024pvq` reports Pareto-optimal
trade-offs in bits per *activation* as well. Activations are different: a new vector
arrives with every token, so it must be quantized as the model runs, in the time of the
matrix product it feeds. Two properties of PVQ make that plausible. After a random
rotation, activations are spread over the sphere like weights are (the argument of the
coherence chapter applies to any vector); and PVQ needs no codebook, so the search of the
pyramid chapter is all there is to run, with nothing calibrated per tensor.

This chapter quantizes the input of every linear layer of SmolLM2 with PVQ
(`pvqref.activations`), against the baseline a user would otherwise reach for:
round-to-nearest per token, with and without the same rotation. The paper gives no
recipe for activations (`../shared/notes/papers.md`, section 1); what follows is our
**reconstruction**, and each choice is measured.

Notation as in the introduction: $x$ is one token's input to a linear layer (length $n$),
$\hat x$ its quantized form, and $b$ the bits per activation.

## The quantizer

A token is quantized exactly as one row of a weight matrix is in the gain chapter,
after the rotation $R = H_n S$ of its $n$ coordinates (one fixed rotation per width,
drawn from a seed):

$$
\hat x = R^\top Q(R x),
$$

where $Q$ cuts the rotated token into groups of $L$, codes each group's direction as a
pyramid point with $K$ pulses and its share of the token's norm with `gain_bits`, and
stores the token's norm in fp16. The baseline, RTN, stores $b$-bit integers
$q_i = \operatorname{round}(x_i / s)$ with one fp16 scale per token,
$s = \max_i \lvert x_i \rvert / (2^{b-1} - 1)$. Both pay 16 bits per token on top of their
payload, so at $b$ bits

$$
\begin{aligned}
\text{RTN:}\quad & \text{bits per activation} = b + \frac{16}{n}, \\
\text{PVQ:}\quad & \text{bits per activation} = \frac{\lceil \log_2 N(L, K) \rceil + \text{gain\_bits}}{L} + \frac{16}{n} \le b + \frac{16}{n} .
\end{aligned}
$$

Which $(L, K, \text{gain\_bits})$? As for weights, we measure rather than model:
`activations.choose` tries every group size and gain width that fits the budget on
tokens captured from two calibration windows, and keeps the one of least error.
""")

code(r"""
import numpy as np
import torch
from pvqref import activations, bench, book, data, evaluate
from pvqref.bench import activations as act_bench
from pvqref.hessian import calibration

book.style()
torch.manual_seed(0)
model, tok = data.load_model()
texts = data.load_texts()
windows = calibration.calibration_windows(tok, texts.joined("calibration"),
                                          *act_bench.CALIBRATION, seed=0)
# 16 tokens per layer input
samples = activations.capture(model, windows[:2], tokens=16)
print({n: X.shape for n, X in samples.items()})
""")

md(r"""
Two widths occur: 576, the residual stream, read by the attention projections, the
output projection and the MLP's gate and up projections; and 1536, the MLP's hidden width,
read by the down projection. The chooser's candidates at 6 bits, best first:
""")

code(r"""
cfg6, candidates = activations.choose(samples, 6)
book.table(["n", "L", "K", "gain bits", "bits per activation",
            "relative MSE"],
           [(r["n"], r["L"], r["K"], r["gain_bits"], r["bits"], r["rel_mse"])
            for r in candidates if r["gain_bits"] >= 4],
           [None, None, None, None, ".3f", ".2e"])
""")

md(r"""
The wider groups win by a little, and the gain deserves many bits: a group spends
$bL$ bits in all, so even 6 or 8 gain bits are a small share of it. The bits stated are
the bits stored; encoding a few tokens and counting what the format holds:
""")

code(r"""
X = samples[576][:8]
Q = activations.encode(X, cfg6)
c = Q.bit_counts()
stored = (c["indices"] + c["gain_codes"] + c["row_norms"]) / X.size
print(f"{stored:.4f} bits per activation stored, "
      f"{cfg6.bits_per_activation(576):.4f} stated")
print("decodes to the simulated quantization:",
      np.allclose(activations.decode(Q, cfg6),
                  activations.quantize_dequantize(X, cfg6)))
""")

md(r"""
## Why rotate, and why PVQ

RTN's step is set by the token's largest coordinate. The ratio of the largest coordinate
to the root mean square, the crest factor, says how much of the $2^b$ levels a token
wastes (the last column gives it for Gaussian vectors of the same length). Real
activations carry outlier channels, and the rotation spreads them:
""")

code(r"""
rows = []
for n, X in sorted(samples.items()):
    raw, rot = (activations.crest_factor(X),
                activations.crest_factor(X, rotate_seed=0))
    gauss = activations.crest_factor(
        np.random.default_rng(0).standard_normal(X.shape))
    rows.append((n, np.median(raw), raw.max(), np.median(rot), rot.max(),
                 np.median(gauss)))
book.table(["n", "median, raw", "max, raw", "median, rotated",
            "max, rotated", "median, Gaussian"], rows, [None] + [".1f"] * 5)
""")

md(r"""
Unrotated, outlier channels make the typical token several times peakier than a
Gaussian vector, and RTN's step grows with it. Rotated, the tokens are as even as
Gaussian vectors of the same length: the median crest factors agree, and even the
peakiest token is not far off. The relative error on the captured tokens, at the
chooser's PVQ configuration for each bit width, and on Gaussian tokens of the same shape:
""")

code(r"""
configs = {b: activations.choose(samples, b)[0] for b in (4, 6, 8)}
gauss = np.random.default_rng(0).standard_normal(samples[576].shape)
rows = []
for b, pvq in configs.items():
    rtn = activations.ActivationConfig("rtn", b, True, 0)
    raw = activations.ActivationConfig("rtn", b, False)
    for n, X in sorted(samples.items()):
        rows.append((b, n, *(activations.relative_error(X, c)
                             for c in (pvq, rtn, raw))))
    rows.append((b, "576, Gaussian", activations.relative_error(gauss, pvq),
                 activations.relative_error(gauss, rtn),
                 activations.relative_error(gauss, raw)))
book.table(["b", "n", "PVQ", "RTN rotated", "RTN unrotated"], rows,
           [None, None, ".2e", ".2e", ".2e"], align="rlrrr")
""")

md(r"""
PVQ's error is well below rotated RTN's at every bit width and both widths, and both are
far below unrotated RTN, which the outlier channels ruin. The Gaussian rows say where
PVQ's advantage comes from. Rotated activations are quantized almost exactly as well as
Gaussian vectors, by both methods, so the outliers are not the story once the rotation
has spread them. The code is: a scalar grid scaled to each token's largest coordinate
spends most of its levels on values that rarely occur, while a pyramid point in $L$
dimensions, with a gain of its own, covers the sphere the rotated token lies on far more
evenly.

## The whole model

`activations.enable` puts the quantizer in front of every linear layer of the decoder
blocks (the LM head keeps full-precision inputs, as in QuaRot). Layers that read the same
tensor, q, k and v, or gate and up, share one quantization, so each block quantizes four
inputs per forward pass. Removing the hooks gives the weight-only model back exactly (a
test). One configuration live: weights unquantized, activations at 6 bits, under the
final chapter's protocol (perplexity on the first 20 windows of 512 tokens of the
evaluation split):
""")

code(r"""
ids = torch.tensor(tok(texts.joined("evaluation"),
                       add_special_tokens=False)["input_ids"])
live = {}
for name, cfg in {
        "pvq": activations.calibrate(model, windows, 6),
        "rtn": activations.ActivationConfig("rtn", 6, True, 0)}.items():
    with activations.enable(model, cfg) as hooks:
        live[name] = {"perplexity": evaluate.perplexity(model, ids, 512, 20),
                      "config": cfg}
print(f"{hooks.calls} quantizations for {hooks.reads} layer inputs "
      f"in 20 windows")
""")

code(r"""
print({name: round(r["perplexity"], 3) for name, r in live.items()})
""", tags=["nbval-ignore-output"])

md(r"""
The recorded grid (`benchmarks/bench_activations.py`), with the weights unquantized and
with the final chapter's PVQ-H weights at 4.25 bits per weight, every activation method
at 4, 6 and 8 bits, and the weight-only model of the same run:
""")

code(r"""
grids = {w: bench.load(f"activations_{w}") for w in ("fp", "pvqh")}
for g in grids.values():
    print(book.wrap(bench.describe(g)))
act_bench.check_live(grids["fp"], live)
""")

code(r"""
book.table(*act_bench.grid_table(grids))
""")

code(r"""
fig, axes = book.figure(1, 2, sharey=False)
act_bench.plot_grid(grids, axes)
""")

code(r"""
print(act_bench.summary(grids))
""")

md(r"""
At 4 bits the gap is wide, and unrotated RTN is unusable at any width this low. At 6 bits
PVQ stays below rotated RTN with both kinds of weights, and with the PVQ-H weights it
adds less than a percent to the weight-only perplexity. At 8 bits every rotated method is
within a fraction of a percent of the weight-only model, and the order can flip: there
perplexity is too coarse a measure. A finer one is how closely each model follows the
weight-only model's own next-token distributions, the final chapter's top-1 agreement
and KL divergence, on the same windows:
""")

code(r"""
agreement = bench.load("activations_agreement")
print(book.wrap(bench.describe(agreement)))
book.table(*act_bench.agreement_table(agreement))
""")

md(r"""
At 6 and at 8 bits PVQ's activations follow the weight-only model more closely than
RTN's: a lower KL divergence and a higher top-1 agreement at both widths, although at 8
bits its perplexity is a hair higher. So the honest statement of the grid is: PVQ below
RTN in perplexity at 4 and 6 bits, and at 8 bits below it in KL and top-1 agreement but
not in perplexity.

## What the search costs

Quantizing activations adds work in front of every matrix product. The seconds per token
of `activations.quantize_dequantize` (rotation, search, gains and the inverse rotation)
for each tier, on a window of 512 captured tokens, against the fp32 products of the
layers that read the same input, on one CPU thread:
""")

code(r"""
cost = bench.load("activations_cost")
print(book.wrap(bench.describe(cost)))
book.table(*act_bench.cost_table(cost))
""")

md(r"""
On the residual stream, where six products share one quantization, the Numba search
costs from about half of those products at 4 bits to a few times them at 8 bits: more
bits mean more pulses to place. In front of the down projection, whose one product is
small, it costs several times more than the product, and more than ten times at 8 bits.
The torch tier, which would run this on a GPU, is three to twelve times slower than Numba on one
CPU thread (the table's Numba and torch columns). None of this ran on a GPU here.
What we measure is the *simulated* quantization: the dequantized activations are
multiplied by float weights. A deployment would need integer or lookup kernels that
consume the pyramid points directly; the search cost above is what PVQ adds to them.

## Limitations

- Simulated quantization, as the weight chapters: no integer kernels, so no end-to-end
  speed-up is claimed.
- The KV cache, the attention scores and the LM head's input stay in full precision.
- The PVQ-H weights were quantized with Hessians of unquantized activations; quantizing
  both together (calibrating each layer on the quantized inputs of the layers before it)
  is not done.
- One rotation per width for every layer; the per-group configuration is chosen once per
  width on two calibration windows.

## Summary

- A token is quantized like a weight row: rotate, groups of $L$ on the pyramid, Beta-law
  gains, an fp16 norm; the bits stated are the bits stored.
- The rotation is what makes low-bit activations possible at all; after it, activations
  behave like Gaussian vectors, and PVQ's spherical code has a half to a third of the
  error of a per-token scalar grid at equal bits.
- On SmolLM2, PVQ activations are below per-token RTN in perplexity at 4 and 6 bits,
  with unquantized and with PVQ-H weights; at 8 bits both are within a fraction of a
  percent of the weight-only model, RTN a hair lower in perplexity and PVQ closer in KL.
- The search runs with no codebook, but on a CPU it costs as much as the matrix products
  it precedes or more, most in front of the down projection and at 8 bits.

## Exercises

1. Quantize activations with `clip=0.9` for RTN (`ActivationConfig("rtn", 4, clip=0.9)`).
   How much of the gap to PVQ does clipping close at 4 bits?
2. Restrict `choose` to `gain_bits=(2,)`. How much worse is PVQ at 8 bits, and why does
   the gain matter more at high rates?
3. Measure the crest factor of the rotated inputs of each block separately. Which
   blocks keep peaky tokens after rotation, and does PVQ's advantage over RTN follow?
4. Calibrate PVQ-H's Hessians on quantized activations (capture each block's inputs
   with `activations.enable` on the blocks already quantized). Does 4-bit perplexity
   improve?
""")

if __name__ == "__main__":
    # --keep-outputs: update the sources of the executed notebook, keep its outputs
    CHAPTER.build(Path(__file__).resolve().parents[1] / "book" / "activations.ipynb",
                  keep_outputs="--keep-outputs" in sys.argv[1:])
