"""Perplexity of a causal language model, with the protocol stated once for every chapter.

Protocol (GPTQ lineage, ``../shared/notes/papers.md`` section 6):

- the text (the evaluation split, ``data.load_texts().joined("evaluation")``) is tokenized
  once, with no special tokens;
- it is cut into consecutive, non-overlapping windows of ``window`` tokens from its start;
  a last partial window is dropped; ``max_windows`` keeps only the first ones;
- each window is one independent forward pass (no context carried between windows);
- every token of a window is predicted except the first, which has no context
  (``window - 1`` predictions per window); with ``bos=True`` the tokenizer's BOS token is
  put in front of each window and all ``window`` tokens are predicted;
- perplexity = exp(total negative log-likelihood / number of predicted tokens), the
  log-likelihoods summed in float64.

SmolLM2-135M-Instruct (fp32), the first 20 windows of 512 tokens, no BOS: 14.97.
"""

from __future__ import annotations

import math

import torch

from . import _checks


def _token_ids(tokens_or_texts, tokenizer) -> torch.Tensor:
    """The token ids as a 1-D int64 tensor: ids are taken as they are; a string (or a list
    of strings, joined by blank lines as ``Texts.joined``) is tokenized without special
    tokens."""
    if isinstance(tokens_or_texts, list) and tokens_or_texts and \
            all(isinstance(t, str) for t in tokens_or_texts):
        tokens_or_texts = "\n\n".join(tokens_or_texts)
    if isinstance(tokens_or_texts, str):
        if tokenizer is None:
            raise ValueError("perplexity of a text needs its tokenizer (tokenizer=...)")
        return torch.tensor(tokenizer(tokens_or_texts, add_special_tokens=False)["input_ids"],
                            dtype=torch.int64)
    ids = torch.as_tensor(tokens_or_texts)
    if ids.dtype not in (torch.int64, torch.int32) or ids.ndim != 1:
        raise ValueError(f"token ids must be a 1-D integer sequence, got {ids.dtype} of shape "
                         f"{tuple(ids.shape)}")
    return ids.to(torch.int64)


def windows(ids: torch.Tensor, window: int, max_windows: int | None = None) -> torch.Tensor:
    """The consecutive non-overlapping windows (count, window) of a 1-D id sequence, the
    last partial one dropped, at most ``max_windows``. Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    window = _checks.integer(window, "window", 2)
    count = len(ids) // window
    if max_windows is not None:
        count = min(count, _checks.integer(max_windows, "max_windows", 1))
    if count == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one window of {window}")
    return ids[:count * window].reshape(count, window)


def perplexity(model, tokens_or_texts, window: int = 512, max_windows: int | None = None,
               bos: bool = False, tokenizer=None) -> float:
    """Perplexity of ``model`` (a causal LM returning ``.logits``) under the protocol of the
    module docstring: non-overlapping windows of ``window`` tokens, every token predicted
    except the first of each window, no BOS unless ``bos`` (then the tokenizer's BOS is
    prepended and every token is predicted). ``tokens_or_texts``: token ids (1-D) or a
    text / list of texts with its ``tokenizer``. Chapter: Hessian-aware PVQ
    (book/hessian.ipynb)."""
    if not isinstance(bos, bool):
        raise TypeError(f"bos must be a bool, got {type(bos).__name__}")
    ids = _token_ids(tokens_or_texts, tokenizer)
    batch = windows(ids, window, max_windows)
    if bos:
        if tokenizer is None or tokenizer.bos_token_id is None:
            raise ValueError("bos=True needs a tokenizer with a BOS token")
        batch = torch.cat([torch.full((len(batch), 1), tokenizer.bos_token_id), batch], dim=1)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for row in batch:
            row = row[None].to(device)
            logits = model(row, use_cache=False).logits[0, :-1].to(torch.float64)
            nll = torch.nn.functional.cross_entropy(logits, row[0, 1:], reduction="sum")
            total += float(nll)
            count += row.shape[1] - 1
    return math.exp(total / count)


def agreement(model, reference, tokens_or_texts, window: int = 512,
              max_windows: int | None = None, tokenizer=None) -> dict:
    """How closely ``model`` follows ``reference`` (the unquantized model) on the windows
    of :func:`perplexity`'s protocol, at every predicted position: ``top1``, the fraction
    of positions where both rank the same next token first, and ``kl``, the mean
    KL(reference || model) of the next-token distributions in nats (float64).
    Chapter: Quantizing a real LLaMA model (book/llama.ipynb)."""
    out = compare(model, reference, tokens_or_texts, window, max_windows, tokenizer)
    return {"top1": out["top1"], "kl": out["kl"]}


def compare(model, reference, tokens_or_texts, window: int = 512,
            max_windows: int | None = None, tokenizer=None) -> dict:
    """:func:`agreement` and both models' :func:`perplexity` from one forward pass of each
    model per window: ``perplexity``, ``reference_perplexity``, ``top1``, ``kl``. With
    ``reference is model`` the model runs once per window (agreement 1 and 0)."""
    batch = windows(_token_ids(tokens_or_texts, tokenizer), window, max_windows)
    device = next(model.parameters()).device
    ref_device = next(reference.parameters()).device
    same, kl, nll, ref_nll, count = 0, 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for row in batch:
            target = row[1:, None]
            logp = _log_probs(model, row, device)
            logq = logp if reference is model else _log_probs(reference, row, ref_device)
            nll -= float(logp.gather(1, target).sum())
            ref_nll -= float(logq.gather(1, target).sum())
            same += int((logp.argmax(-1) == logq.argmax(-1)).sum())
            kl += float((logq.exp() * (logq - logp)).sum())
            count += logp.shape[0]
    return {"perplexity": math.exp(nll / count), "reference_perplexity": math.exp(ref_nll / count),
            "top1": same / count, "kl": kl / count}


def _log_probs(model, row: torch.Tensor, device) -> torch.Tensor:
    """Next-token log-probabilities (float64, on the CPU) at every predicted position."""
    logits = model(row[None].to(device), use_cache=False).logits[0, :-1]
    return torch.log_softmax(logits.to(torch.float64), dim=-1).cpu()
