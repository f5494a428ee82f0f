"""Rotated linear layers and a rotated LLaMA decoder block (torch modules).

- :func:`rotate_weight` / :func:`unrotate_weight`: W' = R_out W R_in^T and back.
- :func:`rotate_linear`, :class:`OnlineRotation`, :class:`RotatedLinear`: a
  ``torch.nn.Linear`` computed in rotated coordinates, same function.
- :func:`rotate_llama_block`, :class:`RotatedResidualBlock`: a whole LLaMA decoder block
  in a rotated residual stream with its RMSNorm weights folded (QuaRot-style).

A rotation here is anything with ``n``, ``forward``, ``inverse`` and ``to_dict`` (the
classes of ``rotations.py``).
"""

from __future__ import annotations

import copy

import torch

from .. import _checks

# ----------------------------------------------------------------------------------------
# Rotating a linear layer y = W x + b, W of shape (out, in).
# With input rotation R_in (x' = R_in x) and output rotation R_out (y' = R_out y):
#     y' = R_out W R_in^T x' + R_out b,   so   W' = R_out W R_in^T,  b' = R_out b,
# and y = R_out^T y'. Row o of W R_in^T is R_in applied to row o of W (forward along the
# input axis); R_out W applies R_out to every column (forward along the output axis).
# To undo: W = R_out^T W' R_in. What must be stored: each rotation's to_dict().
# ----------------------------------------------------------------------------------------

def rotate_weight(W, R_in=None, R_out=None, backend: str | None = "auto"):
    """W' = R_out W R_in^T for W of shape (out, in); either rotation may be None.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return _on_both_sides(W, R_in, R_out, backend, "forward")


def unrotate_weight(W, R_in=None, R_out=None, backend: str | None = "auto"):
    """W = R_out^T W' R_in: the inverse of :func:`rotate_weight`.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return _on_both_sides(W, R_in, R_out, backend, "inverse")


def _on_both_sides(W, R_in, R_out, backend, direction: str):
    """R_in's ``direction`` ("forward" or "inverse") along the input axis 1 of W, then
    R_out's along the output axis 0; a None rotation is skipped."""
    _check_weight(W, R_in, R_out)
    for R, axis in ((R_in, 1), (R_out, 0)):
        if R is not None:
            W = getattr(R, direction)(W, axis=axis, backend=backend)
    return W


def _check_weight(W, R_in, R_out) -> None:
    _checks.ndim(W, 2, "W", "a 2-D weight (out, in)")
    for R, dim, side in ((R_in, 1, "input"), (R_out, 0, "output")):
        if R is not None and R.n != W.shape[dim]:
            raise ValueError(f"{side} rotation has n={R.n} but the weight of shape "
                             f"{tuple(W.shape)} has {W.shape[dim]} on that side")


def rotate_linear(linear, R_in=None, R_out=None):
    """A new torch.nn.Linear with W' = R_out W R_in^T and b' = R_out b.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    out = copy.deepcopy(linear)
    with torch.no_grad():
        out.weight.copy_(rotate_weight(linear.weight.detach(), R_in, R_out, backend="torch"))
        if linear.bias is not None and R_out is not None:
            out.bias.copy_(R_out.forward(linear.bias.detach(), backend="torch"))
    return out


class OnlineRotation(torch.nn.Module):
    """x -> R x on the last axis, as a layer (the online transform of a rotated input).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""

    def __init__(self, rotation):
        super().__init__()
        self.rotation = rotation

    def forward(self, x):
        return self.rotation.forward(x, backend="torch")


class RotatedLinear(torch.nn.Module):
    """Same function as ``linear``, computed in rotated coordinates:
    x' = R_in x (online), y' = W' x' + b', y = R_out^T y' (online).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""

    def __init__(self, linear, R_in=None, R_out=None):
        super().__init__()
        self.R_in, self.R_out = R_in, R_out
        self.inner = rotate_linear(linear, R_in, R_out)

    def forward(self, x):
        if self.R_in is not None:
            x = self.R_in.forward(x, backend="torch")
        y = self.inner(x)
        return self.R_out.inverse(y, backend="torch") if self.R_out is not None else y

    def rotations_dict(self) -> dict:
        """What undoes or re-applies the rotation: both rotations' dicts (JSON-able)."""
        return {"R_in": None if self.R_in is None else self.R_in.to_dict(),
                "R_out": None if self.R_out is None else self.R_out.to_dict()}


# ----------------------------------------------------------------------------------------
# A LLaMA decoder block in a rotated residual stream (QuaRot-style), with R = R_res:
#   RMSNorm(x) = g * x / rms(x). rms(R x) = rms(x) for orthogonal R, so a weightless
#   RMSNorm commutes with R; the weight g does not, so fold it first: W <- W diag(g) for
#   the linears reading the norm (q, k, v after input_layernorm; gate, up after
#   post_attention_layernorm), then g <- 1.
#   Readers of the residual (q, k, v, gate, up): W <- W R^T. Writers (o, down): W <- R W.
#   Optional R_head (order head_dim) per attention head: v's output W_v <- R_head W_v per
#   head, o's input W_o <- W_o R_head^T per head (attention mixes tokens, not head
#   coordinates, so it cancels exactly; no online cost).
#   Optional R_ffn (order intermediate): down's input W_down <- W_down R_ffn^T with an
#   online x -> R_ffn x before it (the SiLU gate sits between up and down).
# The rotated block maps R x to R block(x); RotatedResidualBlock wraps it so that the
# surrounding (unrotated) model sees the same function.
# ----------------------------------------------------------------------------------------

def rotate_llama_block(layer, R_res, R_head=None, R_ffn=None, backend: str | None = "auto"):
    """A rotated deep copy of a transformers LlamaDecoderLayer (see the block above).

    ``backend`` rotates the weights ("auto": torch, as they are tensors; "numba" is
    faster for CPU weights); the online rotations of the returned block always use torch.

    Chapter: Spherical coherence processing (book/coherence.ipynb).
    """
    new = copy.deepcopy(layer)
    _rotate_block_inplace(new, R_res, R_head, R_ffn, backend)
    return new


def _rotate_block_inplace(new, R_res, R_head, R_ffn, backend) -> None:
    """The body of :func:`rotate_llama_block`, on ``new`` itself."""
    attn, mlp = new.self_attn, new.mlp
    with torch.no_grad():
        for norm, readers in ((new.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                              (new.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
            for lin in readers:
                lin.weight.mul_(norm.weight[None, :])
                lin.weight.copy_(rotate_weight(lin.weight, R_in=R_res, backend=backend))
            norm.weight.fill_(1.0)
        for lin in (attn.o_proj, mlp.down_proj):
            lin.weight.copy_(rotate_weight(lin.weight, R_out=R_res, backend=backend))
            if lin.bias is not None:
                lin.bias.copy_(R_res.forward(lin.bias, backend=backend))
        if R_head is not None:
            _rotate_heads(attn, R_head, backend)
        if R_ffn is not None:
            mlp.down_proj.weight.copy_(rotate_weight(mlp.down_proj.weight, R_in=R_ffn,
                                                     backend=backend))
    if R_ffn is not None:
        mlp.down_proj = torch.nn.Sequential(OnlineRotation(R_ffn), mlp.down_proj)


def rotate_llama_model(model, R_res, backend: str | None = "auto"):
    """Rotate a transformers LlamaForCausalLM's residual stream in place (QuaRot-style,
    same function, no online transform): every embedding row e -> R e; every decoder block
    as :func:`rotate_llama_block` (norm weights folded into the readers, readers W R^T,
    writers R W); the final norm's weight folded into the LM head, whose input is then
    rotated too (W diag(g) R^T). Tied embeddings are untied (the head now differs from the
    embedding). Returns the model. Chapter: Hessian-aware PVQ (book/hessian.ipynb)."""
    core = model.model
    if R_res.n != core.embed_tokens.weight.shape[1]:
        raise ValueError(f"the residual rotation has n={R_res.n} but the model's hidden size "
                         f"is {core.embed_tokens.weight.shape[1]}")
    with torch.no_grad():
        head = model.lm_head.weight.detach() * core.norm.weight.detach()[None, :]
        head = rotate_weight(head, R_in=R_res, backend=backend)
        core.embed_tokens.weight.copy_(rotate_weight(core.embed_tokens.weight.detach(),
                                                     R_in=R_res, backend=backend))
        model.lm_head.weight = torch.nn.Parameter(head.contiguous())
        core.norm.weight.fill_(1.0)
    model.config.tie_word_embeddings = False
    for layer in core.layers:
        _rotate_block_inplace(layer, R_res, None, None, backend)
    return model


def _rotate_heads(attn, R_head, backend) -> None:
    d = attn.head_dim
    Wv, Wo = attn.v_proj.weight, attn.o_proj.weight
    Wv.copy_(R_head.forward(Wv.reshape(-1, d, Wv.shape[1]), axis=1,
                            backend=backend).reshape(Wv.shape))
    Wo.copy_(R_head.forward(Wo.reshape(Wo.shape[0], -1, d), axis=-1,
                            backend=backend).reshape(Wo.shape))
    if attn.v_proj.bias is not None:
        b = attn.v_proj.bias
        b.copy_(R_head.forward(b.reshape(-1, d), backend=backend).reshape(b.shape))


class RotatedResidualBlock(torch.nn.Module):
    """Wraps a rotated block: h -> R^T block'(R h, ...); a drop-in for the original.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""

    def __init__(self, rotated_layer, R_res):
        super().__init__()
        self.layer, self.R_res = rotated_layer, R_res

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(self.R_res.forward(hidden_states, backend="torch"), *args, **kwargs)
        if isinstance(out, tuple):
            return (self.R_res.inverse(out[0], backend="torch"),) + out[1:]
        return self.R_res.inverse(out, backend="torch")
