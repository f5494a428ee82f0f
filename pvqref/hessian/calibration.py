"""Calibration: the input second moments H = E[x x^T] of a LLaMA block's linear layers.

GPTQ's sequential order: the calibration windows run through the model one decoder block
at a time, with the blocks before it already quantized, so that each layer's H describes
the inputs it will really see. Only one block's activations are held at a time: the
hidden states entering the current block, (windows, tokens, hidden) in the model's dtype.

A LLaMA block has seven linear layers but four distinct inputs (``LLAMA_INPUTS``):
q, k and v read the normalised attention input; o reads the attention heads' output;
gate and up read the normalised MLP input; down reads silu(gate) * up. One forward hook
per distinct input accumulates, in float64, the sum of x x^T over every token and the
number of tokens (:class:`SecondMoment`); H is their ratio. "True sequential" within a
block (as GPTQ-for-LLaMa): the pipeline collects one input's H, quantizes the layers that
read it, then collects the next with those layers already quantized.

Damping, dead inputs and Cholesky retries happen where H is factored
(:func:`pvqref.hessian.gptq_quantize`, :func:`pvqref.hessian.pvq_quantize`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import _checks

# (name of the input, module path of the layer whose input it is, layers reading it)
LLAMA_INPUTS = (
    ("attention_input", "self_attn.q_proj", ("self_attn.q_proj", "self_attn.k_proj",
                                             "self_attn.v_proj")),
    ("attention_output", "self_attn.o_proj", ("self_attn.o_proj",)),
    ("mlp_input", "mlp.gate_proj", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp_hidden", "mlp.down_proj", ("mlp.down_proj",)),
)
# The inputs that are (normalised) residual-stream states: a residual rotation reaches them.
RESIDUAL_INPUTS = ("attention_input", "mlp_input")


@dataclass
class SecondMoment:
    """Running sum of x x^T (float64) and the number of vectors x: H = total / count.
    With ``diagonal_only`` just the diagonal, sum of x_i^2 (n,): the channel energies."""
    n: int
    device: str = "cpu"
    diagonal_only: bool = False
    total: torch.Tensor = field(init=False)
    count: int = 0

    def __post_init__(self):
        shape = (self.n,) if self.diagonal_only else (self.n, self.n)
        self.total = torch.zeros(shape, dtype=torch.float64, device=self.device)

    def add(self, x: torch.Tensor) -> None:
        """Add every vector of x (..., n): x is cast to float64 before the product."""
        x = x.detach().reshape(-1, self.n).to(torch.float64)
        if self.diagonal_only:
            self.total += (x * x).sum(dim=0)
        else:
            self.total.addmm_(x.T, x)
        self.count += x.shape[0]

    def hook(self, module, args) -> None:
        """A forward pre-hook adding the module's input."""
        self.add(args[0])

    def mean(self) -> torch.Tensor:
        """H = E[x x^T] (n, n) float64 (or its diagonal); ValueError if nothing was
        added."""
        if self.count == 0:
            raise ValueError("no calibration vectors were collected")
        return self.total / self.count


def calibration_windows(tokenizer, text: str, n_windows: int = 32, window: int = 512,
                        seed: int = 0) -> torch.Tensor:
    """``n_windows`` token windows (n_windows, window) int64, drawn without replacement
    (numpy Generator(seed)) from the non-overlapping windows of the tokenized ``text``
    (the calibration split, ``data.load_texts().joined("calibration")``), in text order.
    No BOS is added. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    n_windows = _checks.integer(n_windows, "n_windows", 1)
    window = _checks.integer(window, "window", 2)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    available = len(ids) // window
    if available < n_windows:
        raise ValueError(f"the text has {len(ids)} tokens: {available} windows of {window}, "
                         f"fewer than the {n_windows} asked for")
    chosen = np.sort(np.random.default_rng(seed).choice(available, n_windows, replace=False))
    tokens = torch.tensor(ids[:available * window], dtype=torch.int64).reshape(available, window)
    return tokens[torch.from_numpy(chosen)]


class _Stop(Exception):
    """Raised by the capture hook once the first block's inputs are saved."""


@dataclass
class BlockInputs:
    """The hidden states entering one decoder block, one (1, T, hidden) tensor per window,
    and the keyword arguments the model passes to every block (mask, rotary embeddings...)."""
    hidden: list
    kwargs: list


def first_block_inputs(model, windows: torch.Tensor) -> BlockInputs:
    """Run the embedding of every window and stop at the first decoder block, saving what
    it receives. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    layer0 = model.model.layers[0]
    hidden, kwargs = [], []

    def catch(mod, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    _forward_until_stopped(model, windows,
                           [layer0.register_forward_pre_hook(catch, with_kwargs=True)])
    return BlockInputs(hidden, kwargs)


def _forward_until_stopped(model, windows, handles) -> None:
    """Run every window through the model until a hook raises _Stop (or to the end), then
    remove the hooks' ``handles``."""
    try:
        with torch.no_grad():
            for row in windows:
                try:
                    model(row[None].to(model.device), use_cache=False)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()


def run_block(layer, inputs: BlockInputs) -> BlockInputs:
    """The block's outputs on every window: the next block's inputs.
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    out = []
    with torch.no_grad():
        for h, kw in zip(inputs.hidden, inputs.kwargs):
            y = layer(h, **kw)
            out.append(y[0] if isinstance(y, tuple) else y)
    return BlockInputs(out, inputs.kwargs)


def module(layer, path: str):
    """The submodule of ``layer`` at a dotted ``path`` (e.g. "self_attn.q_proj").
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    for part in path.split("."):
        layer = getattr(layer, part)
    return layer


def input_second_moment(layer, inputs: BlockInputs, path: str) -> torch.Tensor:
    """H = E[x x^T] (float64, on the layer's device) of the input of the linear layer at
    ``path`` inside ``layer`` (e.g. "mlp.down_proj"), over every token of every window,
    running the block as it is now (earlier layers possibly quantized).
    Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    linear = module(layer, path)
    moment = SecondMoment(linear.in_features, str(linear.weight.device))
    handle = linear.register_forward_pre_hook(moment.hook)
    try:
        run_block(layer, inputs)
    finally:
        handle.remove()
    return moment.mean()


def _hooked_forward(model, windows, moments, last_block: int) -> None:
    """Run every window through the model up to the end of ``last_block``, each module of
    ``moments`` ({module: SecondMoment}) adding its input to its moment, then stop."""
    handles = [m.register_forward_pre_hook(mom.hook) for m, mom in moments.items()]

    def stop(mod, args, out):
        raise _Stop
    handles.append(model.model.layers[last_block].register_forward_hook(stop))
    _forward_until_stopped(model, windows, handles)


def block_hessians(model, windows: torch.Tensor, block: int) -> dict:
    """{input name: H} for the four distinct inputs (``LLAMA_INPUTS``) of decoder block
    ``block`` of the model as it is (one forward pass with hooks, no layer quantized:
    a look at one block, not the sequential pipeline). Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    block = _checks.integer(block, "block", 0, len(model.model.layers) - 1)
    layer = model.model.layers[block]
    linears = {name: module(layer, path) for name, path, _ in LLAMA_INPUTS}
    moments = {name: SecondMoment(lin.in_features, str(lin.weight.device))
               for name, lin in linears.items()}
    _hooked_forward(model, windows, {linears[name]: moments[name] for name in linears},
                    block)
    return {name: m.mean() for name, m in moments.items()}


def channel_energy(model, windows: torch.Tensor, path: str) -> np.ndarray:
    """E[x_i^2] of every input channel i of the linear layer at ``path`` (e.g.
    "mlp.down_proj") in every decoder block: an array (blocks, in_features), float64, from
    one forward pass of the model as it is. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    linears = [module(layer, path) for layer in model.model.layers]
    moments = {lin: SecondMoment(lin.in_features, str(lin.weight.device), diagonal_only=True)
               for lin in linears}
    _hooked_forward(model, windows, moments, len(linears) - 1)
    return np.stack([moments[lin].mean().cpu().numpy() for lin in linears])
