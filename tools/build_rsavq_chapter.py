"""Write book/rsavq.ipynb from the cell list below (no outputs; tools/run_notebooks.py
executes it and stores them). Kept so that the chapter's source reads as one file."""

from pathlib import Path

from chapter_builder import Chapter

CHAPTER = Chapter("rsavq")
md, code = CHAPTER.md, CHAPTER.code

md(r"""
# RSAVQ's natural-gradient error projection

Every quantizer in this book so far measured its error in the coordinates of the weights
(relative MSE) or of a layer's outputs (the proxy loss $\operatorname{tr}(\Delta H
\Delta^\top)$). RSAVQ {cite}`xu2025rsavq` measures it in the coordinates that matter to
the model's *predictions*: the Fisher information metric. From that one idea come two
refinements: steer each layer's error in the direction that costs the least loss
(EDSG, error direction sensitivity guidance), and give more bits to the output channels
the loss is most sensitive to (WCSG, weighted channel sensitivity guidance). The paper
applies them to k-means vector quantization in the style of VPTQ {cite}`liu2024vptq`; we
apply them to PVQ-H as well, whose per-group pulse count makes a channel-wise rate
natural.

No code was released and some of the paper's equations contradict each other, so this
chapter marks what we **reconstruct** and measures each choice. Everything below ran on
the whole SmolLM2 model (recorded runs, and one block live): the Fisher, EDSG and WCSG on
PVQ-H and on the paper's own base, k-means vector quantization (`pvqref.vq`), at 2.25 and
3.25 bits per weight.

## Information geometry in plain words

Two nearby models, with weights $W$ and $W + \delta$, predict next-token distributions
$p_W$ and $p_{W+\delta}$. How different are the predictions? To second order,

$$
\operatorname{KL}\bigl(p_W \,\Vert\, p_{W+\delta}\bigr) \approx \tfrac12\, \delta^\top F\, \delta,
\qquad F = \mathbb{E}\bigl[\nabla \log p\; \nabla \log p^\top\bigr],
$$

where $F$ is the Fisher information. It is a *metric* on weight space: $\delta^\top F
\delta$ is the squared length of a move $\delta$ measured by how much the model's
predictions change, not by how much the numbers change. A quantization error $\Delta$ is
such a move. The *natural gradient* $F^{-1} \nabla\mathcal{L}$ is the direction of
steepest descent of the loss $\mathcal{L}$ in this metric.

For one linear layer the Fisher has $(mn)^2$ entries, far too many. With the weight
gradients $G_s$ of the loss on each calibration window $s$, RSAVQ approximates it by a
Kronecker product of an output factor and an input factor,

$$
F \approx \frac{A \otimes B}{s}, \qquad A = \mathbb{E}[G_s G_s^\top], \quad
B = \mathbb{E}[G_s^\top G_s], \quad s = \mathbb{E}\lVert G_s \rVert_F^2 .
$$

**Reconstruction.** The paper does not say how the product is scaled. We divide by
$s = \operatorname{tr} A = \operatorname{tr} B$: then the approximation is exact when every
$G_s$ is the same rank-one matrix and keeps $\operatorname{tr} F$ exact in general (both
are tests in `tests/test_rsavq.py`). With it, $F$ acts on a matrix $X$ as $A X B / s$, and
the natural gradient of the mean gradient $\bar G = \mathbb{E}[G_s]$ is two Cholesky solves,
$N = F^{-1}\bar G = s\, A^{-1} \bar G B^{-1}$. Both factors are damped like GPTQ's Hessian
(1% of the mean diagonal).
""")

code(r"""
import numpy as np
import torch
from pvqref import bench, book, data
from pvqref.bench import rsavq as rsavq_runs
from pvqref.chapters import rsavq as chapter
from pvqref.hessian import calibration
from pvqref.rsavq import allocation, fisher, wcsg

book.style()
torch.manual_seed(0)
model, tok = data.load_model()
text = data.load_texts().joined("calibration")
windows = calibration.calibration_windows(tok, text, 8, 512, seed=0)
BLOCK = 15
names = fisher.linear_layers(model, [BLOCK])
fishers = fisher.layer_fishers(model, windows, names)  # backward per window
print(f"{len(fishers)} layers of block {BLOCK}, "
      f"Fisher from {len(windows)} windows")
""")

md(r"""
The natural gradient really is the solution of $F N = \bar G$: applying the Kronecker
Fisher to it gives the gradient back.
""")

code(r"""
f = fishers[f"model.layers.{BLOCK}.mlp.down_proj"]
N = f.fisher.natural_gradient(f.gradient)
g_norm = np.linalg.norm(f.gradient)
residual = np.linalg.norm(f.fisher.apply(N) - f.gradient) / g_norm
print(f"down_proj: ||F N - g|| / ||g|| below 1e-8: {residual < 1e-8}")
""")

md(r"""
## Fisher against Hessian

GPTQ and PVQ-H weight a layer's error by $H = \mathbb{E}[x x^\top]$, the second moment of
its inputs. The Fisher's input factor $B$ plays the same role, but it weights each
token's input by how strongly the loss's gradient flows back through that token
($G_s = \sum_t \delta_t x_t^\top$, $\delta_t$ the back-propagated signal). How alike are
they on a real block? Three measures: the cosine between the two matrices (1: equal up
to scale), the correlation of their log diagonals (do they rank the inputs alike?), and
the overlap of their leading eight eigenvectors (1: the same dominant directions).
""")

code(r"""
H = calibration.block_hessians(model, windows, BLOCK)
rows = []
for inp, _, readers in calibration.LLAMA_INPUTS:
    for r in readers:
        B = fishers[f"model.layers.{BLOCK}.{r}"].fisher.B
        sim = fisher.similarity(B, H[inp])
        rows.append((r, inp, sim["cosine"], sim["diagonal"], sim["top"]))
chapter.similarity_table(rows)
""")

md(r"""
The two metrics agree closely on most layers as whole matrices and in how they rank the
inputs, and less in their leading directions: the Fisher reweights the tokens, so it
keeps the Hessian's scale structure but shifts which few directions dominate. That is
the extra information RSAVQ hopes to use.

## EDSG: steer the error downhill

To second order, the loss after quantizing $W$ to $\widehat W = W + \Delta$ is
$\mathcal{L} + \langle \bar G, \Delta\rangle + \tfrac12 \Delta^\top F \Delta$, smallest at
$\Delta = -F^{-1}\bar G$. EDSG steers the error a fraction $\lambda$ of the way there:

$$
\min_{\widehat W}\; \bigl\lVert \Delta + \lambda N \bigr\rVert_F^2
\quad\Longleftrightarrow\quad \text{quantize the target } T = W - \lambda N
\text{ instead of } W .
$$

**Reconstruction: the sign.** The paper writes the sign both ways. We take the one for
which the first-order loss change $\langle \bar G, \Delta\rangle \approx -\lambda\,
\bar G^\top F^{-1} \bar G$ is negative (the error points downhill), and measure the
opposite sign below.

**Reconstruction: the size of $\lambda$.** The paper's $\lambda$ runs from 0.01 to 0.1
{cite}`xu2025rsavq`. On SmolLM2 the raw natural gradient is enormous next to the weights:
""")

code(r"""
def step_ratio(name, f):                        # ||N|| / ||W|| of one layer
    W = model.get_submodule(name).weight.detach().numpy()
    N = f.fisher.natural_gradient(f.gradient)
    return np.linalg.norm(N) / np.linalg.norm(W)

ratio = [step_ratio(name, f) for name, f in fishers.items()]
print(f"||N|| / ||W|| in block {BLOCK}: from {min(ratio):.1e} to "
      f"{max(ratio):.1e}")
""")

md(r"""
A step of $0.05\,N$ would move every layer by more than ten thousand times its norm, so the
paper's $\lambda$ cannot be meant for the raw $N$ (the empirical Fisher of a few windows is
small in most directions, and its inverse amplifies them). We read $\lambda$ as a
*relative* step: the direction of $N$ scaled to $\lambda \lVert W\rVert_F$, so that
$\lambda = 0.05$ moves a layer by 5% of its norm, about the size of a 4-bit quantization
error (`rsavq.edsg_target(..., step="relative")`, the default; `step="raw"` keeps the
literal formula). Then $\lambda = 0$ is the base quantizer bit for bit (a test).

The whole-model sweep: PVQ-H at 3.25 bits per weight, the Fisher of every layer from the
32 calibration windows of the final chapter, each layer coding its EDSG target, evaluated
under the final chapter's protocol (perplexity on 20 windows of 512 tokens, top-1
agreement and KL divergence to the unquantized model):
""")

code(r"""
sweep = bench.load("rsavq")
fp = chapter.unquantized_row()
print(book.wrap(bench.describe(sweep)))
s = sweep["settings"]
print(f"{s['method']} at {s['bpw']} bits per weight; unquantized "
      f"perplexity (final chapter's run): {fp['perplexity']:.3f}")
chapter.sweep_table(sweep, fp)
""")

md(r"""
Three things stand out. The sign matters: the opposite sign makes the model much worse,
so the error really is being pointed along a direction the loss cares about. A small step
lowers the perplexity markedly, and the paper's default step overshoots. And the step
that lowers the perplexity *raises* the KL divergence and lowers the top-1 agreement with
the unquantized model: EDSG does not make the quantized model more like the original, it
moves it downhill on the calibration text, which resembles the evaluation text (both are
Wikipedia). The ablation below separates the two effects with a control: the unquantized
model moved by the same step, with no quantization at all.

Note also that the sweep picks $\lambda$ on the evaluation text; a held-out choice of
$\lambda$ would be the fair protocol, and the recorded grid is coarse.
""")

md(r"""
## WCSG: bits where the loss is sensitive

Output channel $c$ (a row of $W$) has sensitivity
$I_c = \tfrac12\, \bar G_c F_c^{-1} \bar G_c^\top + 1$, where $F_c = (A_{cc}/s)\, B$ is its
block of the Kronecker Fisher (the $+1$ keeps $\log_2 I_c \ge 0$). Under the distortion
model $D_c = I_c\, 2^{-2 b_c}$ with $\sum_c b_c$ fixed, the paper allocates
$b_c \propto \log_2 I_c$; the exact optimum (Lagrange, with channels that would get a
negative rate set to zero) is

$$
b_c = \bar b + \tfrac12 \log_2 \frac{I_c}{\bigl(\prod_{c'} I_{c'}\bigr)^{1/m}} .
$$

Channels are then sorted by $I_c$ into $G = 4$ groups that share a rate; in PVQ each
group is a PVQ matrix of its own pulse count $K$, and the layer never stores more than its
budget (`rsavq.wcsg.plan_row_groups`). One layer of block 15:
""")

code(r"""
name = f"model.layers.{BLOCK}.mlp.gate_proj"
f = fishers[name]
I = f.fisher.sensitivity(f.gradient)
paper = allocation.paper_rule(I, 3.25)
lagrange = allocation.lagrange_rule(I, 3.25)
print(chapter.allocation_summary(I, paper, lagrange, 3.25))
shape = model.get_submodule(name).weight.shape
plan = wcsg.plan_row_groups(shape, 3.25, I, 64, 3)
chapter.plan_table(plan, shape)
""")

code(r"""
chapter.allocation_figure(I, paper, lagrange, 3.25)
""", tags=["hide-input"])

md(r"""
The paper's rule is a line through the origin in $\log_2 I_c$, with slope
$\bar b / \overline{\log_2 I}$; the optimum is a line of slope one half with an offset.
On this layer the two slopes are close, so the rules allocate alike and the paper's is
within a few percent of the optimum of its own distortion model; they part where the mean
log-sensitivity is far from twice the rate (exercise 3). Within the budget, the most
sensitive quarter of the channels gets about two thirds of a bit per weight more than the
least sensitive.

## The ablation on the whole model

PVQ-H, then adding EDSG, WCSG and both, at 3.25 bits per weight ($\lambda$ = 0.01 from the
sweep), with the control described above:
""")

code(r"""
abl = bench.load("rsavq_ablation")
print(book.wrap(bench.describe(abl)))
lam = abl["settings"]["lambda"]
base = next(r for r in sweep["rows"] if r["lambda"] == 0.0)
steered = next(r for r in sweep["rows"] if r["lambda"] == lam)
rows = [("pvq-h", base), ("+edsg", steered)]
rows += [(r["label"], r) for r in abl["rows"]]
rsavq_runs.ablation_table(rows, fp)
""")

code(r"""
def excess(r):
    return r["perplexity"] / fp["perplexity"] - 1

both = next(r for r in abl["rows"] if r["label"] == "+edsg +wcsg")
print("change of PVQ-H's perplexity excess, PVQ-H + EDSG + WCSG: "
      f"{100 * (excess(both) / excess(base) - 1):+.0f}%")
print("change of PVQ-H's perplexity excess, PVQ-H + EDSG alone: "
      f"{100 * (excess(steered) / excess(base) - 1):+.0f}%")
""")

md(r"""
What the rows say, in order:

- **The control.** The unquantized model moved by the same EDSG step, with nothing
  quantized, is *better* than the unquantized model on the evaluation text, and drifts
  little from it in KL. The natural-gradient step is a small step of training on the
  calibration text, and that text resembles the evaluation text. Part of EDSG's gain is
  this, not better quantization.
- **EDSG** lowers PVQ-H's perplexity excess by far more than a tenth, but the KL divergence
  to the unquantized model rises and the top-1 agreement falls: measured against the
  original model's predictions, the steered model is further away, not closer.
- **WCSG** alone lowers the proxy loss slightly (its bits go where the gradient says) but
  does not lower the perplexity, with either rule; the Lagrange rule is better than the
  paper's, as its distortion model predicts. Added to EDSG it changes little.

So on SmolLM2 at 3.25 bits PVQ-H with EDSG and WCSG has a much smaller perplexity excess
than PVQ-H alone (the lines above), all of it from EDSG, with two cautions a reader should
weigh: the gain comes with a larger distance to the unquantized model's predictions, and
the control shows the step improving the unquantized model itself on text like the
calibration text.

### The paper's ordering, on both bases and at two rates

The paper adds its refinements in turn to its own base quantizer, and each step improves
on the last: on LLaMA-2 7B at 2 bits, WikiText-2 perplexity 9.20 for k-means VQ, 7.29
with EDSG, 5.81 with WCSG as well {cite}`xu2025rsavq`. We ran the same cumulative ablation (base, then EDSG,
then EDSG with WCSG) on that base, k-means vector quantization of length-6 vectors with
GPTQ feedback and $G = 4$ channel groups (`pvqref.vq`; `pvqref quantize --method rsavq`),
and on PVQ-H, at 2.25 and 3.25 bits per weight, with the same Fisher, $\lambda$ and
evaluation:
""")

code(r"""
runs = {name: bench.load(name) for *_, name in rsavq_runs.ORDERING_RUNS}
for run in runs.values():
    print(book.wrap(bench.describe(run)))
ordering = rsavq_runs.orderings(sweep, abl, runs)
rsavq_runs.ordering_table(ordering, fp)
""")

code(r"""
print(rsavq_runs.ordering_verdicts(ordering, fp))
""")

md(r"""
Read the table by base and rate; the lines above it summarise each. EDSG lowers the
perplexity excess on both bases and at both rates. At 2.25 bits, where the errors are
larger, it also lowers the KL divergence to the unquantized model and raises the top-1
agreement: there it brings the quantized model closer to the original, not only downhill
on Wikipedia. WCSG added to EDSG raises the excess again in every case, most on the
k-means base: the paper's second step does not reproduce on SmolLM2, on its base or on
ours. We do not know why it fails here. One reading: the allocation rests on the
distortion model $D_c = I_c\, 2^{-2 b_c}$, and on the quarter of the channels that gives
up bits these quantizers' errors may grow much faster than that model says, at rates
where every bit counts (exercise 5 asks for the measurement that would settle it).

The base matters more than either refinement: at the same rate PVQ-H alone has a lower
perplexity than the paper's k-means base with EDSG, at 3.25 bits and at 2.25 bits.

## What is not measured

- $\lambda$ was chosen on the evaluation text from a coarse grid, on PVQ-H at 3.25 bits,
  and reused for every base and rate; a held-out choice per base and rate would be the
  fair protocol.
- WCSG alone was measured on PVQ-H at 3.25 bits only; the other ablations add it to EDSG,
  as the paper does.
- The Fisher is computed once, on the unquantized model; a sequential Fisher (gradients
  with the earlier blocks already quantized, as the Hessians are) is not tried.
- One model and one text: the paper's ablation model is fifty times larger, and its
  evaluation includes zero-shot tasks, for which no PyPI package ships data.

## Summary

- The Fisher metric measures a weight change by the change in the model's predictions; a
  Kronecker product of an output and an input factor, built from per-window gradients,
  approximates it per layer, and its inverse gives the natural gradient in two solves.
- On SmolLM2 the Fisher's input factor and the Hessian agree as matrices and in ranking
  the inputs, less in their leading directions.
- EDSG steers the error toward the negative natural gradient; its sign is measurable, and
  its step must be read relative to the weights.
- WCSG gives the sensitive channels more pulses within the same budget; the Lagrange rule
  is the optimum of the paper's own distortion model.
- On SmolLM2 the paper's ablation ordering holds for its first step and not its second:
  EDSG lowers the perplexity on both bases at both rates, and WCSG added to it raises the
  perplexity in every case measured. PVQ-H alone beats the paper's k-means base with EDSG
  at the same rate.

## Exercises

1. Repeat the Fisher-against-Hessian table for block 0 and block 29. Where do the two
   metrics disagree most, and why might the first and last blocks differ?
2. `rsavq.edsg_target(..., step="raw")` uses the literal formula. Quantize one layer with
   it at $\lambda = 10^{-6}$ and compare the error's direction with the relative step's.
3. Show that the Lagrange allocation equalises $I_c 2^{-2 b_c}$ over the channels that get
   bits, and find a sensitivity profile where the paper's rule and the optimum coincide.
4. The diagonal Fisher (`kind="diagonal"`) needs $mn$ numbers per layer instead of
   $m^2 + n^2$. Compute the sensitivities both ways for block 15 and compare the channel
   rankings.
5. WCSG's allocation assumes $D_c = I_c\, 2^{-2 b_c}$. For one layer of block 15, quantize
   each of its four sensitivity groups with PVQ-H at rates from two to four bits per
   weight, measure the Fisher-weighted error $\sum_c I_c \lVert \Delta_c 
Vert^2$ of
   each, and fit the exponent. Does the error fall as $2^{-2b}$? Redo the allocation with
   the measured curves and quantize the whole model with it.
""")



if __name__ == "__main__":
    CHAPTER.build(Path(__file__).resolve().parents[1] / "book" / "rsavq.ipynb")
