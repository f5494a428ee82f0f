"""Spherical coherence processing: seeded randomized Hadamard rotations of LLM weights.

PVQ codes a weight group as a gain times a point of the pyramid, and its codebook is
best when group directions are spread evenly over the sphere. A random orthogonal
rotation of a layer's input and output spaces does that (and removes outliers) while
leaving the network's function unchanged, provided the activations are rotated to
match. Following QuIP# and QuaRot we use the randomized Hadamard transform
``x -> H S x`` (S: random signs, H: orthonormal Hadamard matrix): in practice it
scrambles as well as a dense random rotation, costs O(n log n) instead of O(n^2), and
is reproduced exactly from ``(n, seed)``.

Contents, in reading order:

- Hadamard matrices of order ``n = k * 2^m`` (Sylvester for 2^m; Paley I and II for the
  small factor k): :func:`hadamard` (dense, n <= MAX_DENSE_ORDER), :func:`is_supported`,
  :func:`supported_sizes`.
- The fast transform ``x -> H x`` along any axis, three tiers:
  :func:`hadamard_transform` with ``backend="reference"|"numba"|"torch"``.
- Rotations: :class:`RandomizedHadamard` and the explicit fallback
  :class:`RandomOrthogonal` (:func:`random_orthogonal`), chosen by the caller through
  :func:`make_rotation`; both serialize to a small JSON-able dict.
- Rotating linear layers: :func:`rotate_weight`, :func:`unrotate_weight`,
  :func:`rotate_linear`, :class:`RotatedLinear`; a whole LLaMA decoder block with its
  RMSNorm weights folded (QuaRot-style): :func:`rotate_llama_block`.
- Statistics for the chapter: :func:`incoherence`, :func:`excess_kurtosis`,
  :func:`beta_law_ks`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import operator
import re
from functools import lru_cache

import numpy as np
import torch
from numba import njit

# ----------------------------------------------------------------------------------------
# Hadamard matrices.
#
# A Hadamard matrix of order n has entries +-1 and H H^T = n I; H / sqrt(n) is orthogonal.
# If A (order a) and B (order b) are Hadamard, so is the Kronecker product A (x) B (order
# ab). We build every order as n = k * 2^m:   H_n = H_k (x) H_{2^m}.
#
# Sylvester:  H_1 = [1],  H_{2M} = [[H_M, H_M], [H_M, -H_M]]  (= H_2 (x) H_M).
#
# Paley, over the finite field GF(q), with chi the quadratic character (chi(0) = 0,
# chi(x) = +1 if x is a non-zero square, -1 otherwise) and the Jacobsthal matrix
# Q[i, j] = chi(a_i - a_j) over the q field elements a_i; Q J = 0, Q Q^T = q I - J.
#   Paley I,  q = 3 (mod 4), order q + 1: Q is antisymmetric; C = [[0, 1^T], [-1, Q]]
#       is an antisymmetric conference matrix (C C^T = q I) and H = I + C.
#   Paley II, q = 1 (mod 4), order 2(q + 1): Q is symmetric; C = [[0, 1^T], [1, Q]] is a
#       symmetric conference matrix, and H replaces each entry of C by a 2x2 block:
#       0 -> [[1, -1], [-1, -1]],  +-1 -> +-[[1, 1], [1, -1]].
# q may be any prime power; GF(p^e) is built as polynomials over GF(p) modulo a monic
# irreducible polynomial of degree e (the first one found in lexicographic order).
#
# For a given n we take the smallest constructed k with n = k * 2^m (most of the work in
# the O(n log n) butterfly); when several Paley constructions give that k we prefer prime
# fields to prime-power fields, then Paley I to Paley II.
# Constructed factors are bounded by MAX_BASE_ORDER so the dense k x k part stays small.
# ----------------------------------------------------------------------------------------

MAX_BASE_ORDER = 256
MAX_DENSE_ORDER = 16384     # largest n for the dense matrices (hadamard, RandomOrthogonal):
                            # n^2 float64 = 2 GiB at 16384; larger n: use the fast transform
MAX_ORDER = 2 ** 26         # largest n of a RandomizedHadamard (67 million, > 1000 times any
                            # LLM dimension; its signs alone take 8n bytes)


def _as_int(value, name: str, minimum: int) -> int:
    """value as a Python int >= minimum, or a ValueError naming ``name``.

    Accepts Python and numpy integers (anything with ``__index__``), not bool, float or
    str: 2.5, 2.0, True and "5" are refused rather than silently read as 2, 2, 1 and 5.
    """
    if not isinstance(value, (bool, np.bool_)):
        try:
            value_int = operator.index(value)
        except TypeError:
            pass
        else:
            if value_int >= minimum:
                return value_int
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")
    raise ValueError(f"{name} must be {kind}, got {value!r}")


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q = p^e, p prime, e >= 1; None if q is not a prime power."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)    # smallest prime factor
    e = 0
    while q % p == 0:
        q //= p
        e += 1
    return (p, e) if q == 1 else None


def _polymulmod(a: list[int], b: list[int], f: list[int], p: int) -> list[int]:
    """a * b mod (f, p); polynomials as coefficient lists, lowest degree first; f monic."""
    e = len(f) - 1
    prod = [0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            prod[i + j] = (prod[i + j] + ai * bj) % p
    for d in range(len(prod) - 1, e - 1, -1):       # reduce: x^d = x^(d-e) * (x^e - f)
        c = prod[d]
        if c:
            for t in range(e + 1):
                prod[d - e + t] = (prod[d - e + t] - c * f[t]) % p
    return (prod + [0] * e)[:e]


def _irreducible(p: int, e: int) -> list[int]:
    """The first monic irreducible polynomial of degree e over GF(p): no monic factor of
    degree 1..e//2 divides it (checked by long division; q is small)."""
    for code in range(p ** e):
        f = [(code // p ** t) % p for t in range(e)] + [1]
        if all(_has_no_factor(f, g, p) for g in _monic_polys(p, range(1, e // 2 + 1))):
            return f
    raise AssertionError("unreachable: irreducible polynomials exist for every degree")


def _monic_polys(p: int, degrees):
    for d in degrees:
        for code in range(p ** d):
            yield [(code // p ** t) % p for t in range(d)] + [1]


def _has_no_factor(f: list[int], g: list[int], p: int) -> bool:
    r = list(f)                                  # long division of f by monic g
    for d in range(len(r) - 1, len(g) - 2, -1):
        c = r[d]
        if c:
            for t in range(len(g)):
                r[d - len(g) + 1 + t] = (r[d - len(g) + 1 + t] - c * g[t]) % p
    return any(r[:len(g) - 1])


def quadratic_character(q: int) -> np.ndarray:
    """chi[a, b] = chi(a - b) over GF(q), elements numbered 0..q-1 (base-p digits = the
    coefficients of the polynomial representing the element)."""
    pe = _prime_power(q)
    if pe is None:
        raise ValueError(f"GF(q) needs a prime power q, got {q}")
    p, e = pe
    digits = np.array([[(a // p ** t) % p for t in range(e)] for a in range(q)])
    f = _irreducible(p, e) if e > 1 else [0, 1]
    squares = set()
    for a in range(1, q):
        sq = _polymulmod(list(digits[a]), list(digits[a]), f, p)
        squares.add(sum(c * p ** t for t, c in enumerate(sq)))
    diff = (digits[:, None, :] - digits[None, :, :]) % p          # a - b, digit-wise
    index = (diff * (p ** np.arange(e))).sum(axis=-1)
    chi = np.where(np.isin(index, list(squares)), 1, -1)
    chi[index == 0] = 0
    return chi.astype(np.int64)


def paley1(q: int) -> np.ndarray:
    """Integer Hadamard matrix of order q + 1, q a prime power = 3 (mod 4)."""
    if _prime_power(q) is None or q % 4 != 3:
        raise ValueError(f"Paley I needs a prime power q = 3 (mod 4), got {q}")
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:], C[1:, 0], C[1:, 1:] = 1, -1, quadratic_character(q)
    return np.eye(q + 1, dtype=np.int64) + C


def paley2(q: int) -> np.ndarray:
    """Integer Hadamard matrix of order 2(q + 1), q a prime power = 1 (mod 4)."""
    if _prime_power(q) is None or q % 4 != 1:
        raise ValueError(f"Paley II needs a prime power q = 1 (mod 4), got {q}")
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:], C[1:, 0], C[1:, 1:] = 1, 1, quadratic_character(q)
    zero_block = np.array([[1, -1], [-1, -1]])
    sign_block = np.array([[1, 1], [1, -1]])
    return np.kron(C, sign_block) + np.kron((C == 0).astype(np.int64), zero_block)


def sylvester(M: int) -> np.ndarray:
    """Integer Sylvester-Hadamard matrix of order M = 2^m (natural order)."""
    if M < 1 or M & (M - 1):
        raise ValueError(f"Sylvester needs a power of two, got {M}")
    H = np.ones((1, 1), dtype=np.int64)
    while H.shape[0] < M:
        H = np.block([[H, H], [H, -H]])
    return H


@lru_cache(maxsize=None)
def _base_constructions() -> dict[int, str]:
    """{k: construction} for every constructed factor k <= MAX_BASE_ORDER that is not a
    power of two times a smaller constructed factor (those come from Sylvester).

    Preference when several Paley constructions give the same k: prime fields before
    prime-power fields, then Paley I before Paley II.
    """
    found: dict[int, str] = {}
    for want_prime in (True, False):
        for q in range(3, MAX_BASE_ORDER):
            pe = _prime_power(q)
            if pe is None or (pe[1] == 1) != want_prime:
                continue
            if q % 4 == 3 and q + 1 <= MAX_BASE_ORDER:
                found.setdefault(q + 1, f"paley1(q={q})")
        for q in range(3, MAX_BASE_ORDER):
            pe = _prime_power(q)
            if pe is None or (pe[1] == 1) != want_prime:
                continue
            if q % 4 == 1 and 2 * (q + 1) <= MAX_BASE_ORDER:
                found.setdefault(2 * (q + 1), f"paley2(q={q})")
    base = {1: "sylvester"}
    for k in sorted(found):
        if not any(k % j == 0 and k // j > 1 and (k // j) & (k // j - 1) == 0 for j in base):
            base[k] = found[k]
    return base


def base_orders() -> list[int]:
    """The constructed factors k (up to MAX_BASE_ORDER): every supported n is k * 2^m."""
    return sorted(_base_constructions())


def _decompose(n: int) -> tuple[int, int, str] | None:
    """(k, M = 2^m, construction of k) with n = k * M and k smallest; None if unsupported
    (including n that is not a positive integer)."""
    try:
        n = _as_int(n, "n", 1)
    except ValueError:
        return None
    for k, name in sorted(_base_constructions().items()):
        if n % k == 0:
            M = n // k
            if M & (M - 1) == 0:
                return k, M, name
    return None


def is_supported(n: int) -> bool:
    """True if an order-n Hadamard matrix is constructed here (n = k * 2^m with k in
    :func:`base_orders`): :func:`hadamard_transform` handles length n. (The dense
    :func:`hadamard` also needs n <= MAX_DENSE_ORDER.)"""
    return _decompose(n) is not None


def supported_sizes(max_n: int) -> list[int]:
    """All supported orders n <= max_n, ascending."""
    sizes = set()
    for k in base_orders():
        n = k
        while n <= max_n:
            sizes.add(n)
            n *= 2
    return sorted(sizes)


def construction(n: int) -> str:
    """Human-readable recipe of H_n, e.g. ``"paley2(q=17) (x) sylvester(16)"``."""
    k, M, name = _require(n)
    if k == 1:
        return f"sylvester({M})"
    return name if M == 1 else f"{name} (x) sylvester({M})"


def _nearest_supported(n: int) -> tuple[int | None, int]:
    """The largest supported size below n (None for n = 1) and the smallest above n.

    Every supported size is k * 2^m with k a constructed factor, so for each k take the
    largest k * 2^m <= n - 1 and the smallest k * 2^m >= n + 1 (O(number of factors)).
    """
    below, above = None, None
    for k in base_orders():
        if k < n:                                     # 2^m <= (n - 1) // k < 2^(m + 1)
            b = k << (((n - 1) // k).bit_length() - 1)
            below = b if below is None else max(below, b)
        a = k if k > n else k << (n // k).bit_length()     # 2^(m - 1) <= n // k < 2^m
        above = a if above is None else min(above, a)
    return below, above


def _require(n: int) -> tuple[int, int, str]:
    n = _as_int(n, "Hadamard order", 1)
    dec = _decompose(n)
    if dec is None:
        below, above = _nearest_supported(n)
        raise ValueError(
            f"no Hadamard matrix of order n={n} is constructed here. Supported: n = k * 2^m "
            f"with k in {base_orders()} (Sylvester and Paley I/II factors up to "
            f"{MAX_BASE_ORDER}); nearest supported sizes: {below} and {above}. For other "
            f"sizes choose the explicit fallback: make_rotation(n, seed, "
            f"fallback='orthogonal') or RandomOrthogonal(n, seed), a seeded dense random "
            f"orthogonal matrix (O(n^2) per vector).")
    return dec


@lru_cache(maxsize=64)
def _base_matrix(k: int) -> np.ndarray:
    """Integer Hadamard matrix of the constructed factor k."""
    name = _base_constructions()[k]
    if name == "sylvester":
        return np.ones((1, 1), dtype=np.int64)
    q = int(name.split("=")[1].rstrip(")"))
    return paley1(q) if name.startswith("paley1") else paley2(q)


def hadamard(n: int) -> np.ndarray:
    """Orthonormal Hadamard matrix H_n = (H_k (x) H_{2^m}) / sqrt(n), float64, H H^T = I.

    Dense, for checks and small n: the result takes n^2 * 8 bytes (2 GiB at n = 16384) and
    is built in place, so for large n the peak memory is at most 1.25 times that (with
    tracemalloc; the extra quarter is numpy's copy in the last, overlapping doubling step).
    Raises ValueError for an unsupported n and for n > MAX_DENSE_ORDER (16384); to apply
    H_n at any supported size without the matrix, use :func:`hadamard_transform` or
    :class:`RandomizedHadamard`.
    """
    k, M, _ = _require(n)
    n = k * M
    if n > MAX_DENSE_ORDER:
        raise ValueError(
            f"hadamard(n={n}) would build a dense {n} x {n} matrix ({n * n * 8 / 2**30:.1f} "
            f"GiB); the dense matrix is limited to n <= MAX_DENSE_ORDER = {MAX_DENSE_ORDER}. "
            f"Apply H_n without it: hadamard_transform(x) (O(n log n) per vector).")
    H = np.empty((n, n))
    HM = H if k == 1 else np.empty((M, M))        # the Sylvester factor H_M / sqrt(n)
    HM[0, 0] = 1.0 / math.sqrt(n)
    s = 1
    while s < M:                                   # H_2s = [[H_s, H_s], [H_s, -H_s]]
        HM[:s, s:2 * s] = HM[:s, :s]
        HM[s:2 * s, :s] = HM[:s, :s]
        np.negative(HM[:s, :s], out=HM[s:2 * s, s:2 * s])
        s *= 2
    if k > 1:                                      # H[a M + b, a' M + b'] = Hk[a, a'] HM[b, b']
        np.multiply(_base_matrix(k)[:, None, :, None], HM[None, :, None, :],
                    out=H.reshape(k, M, k, M))
    return H


# ----------------------------------------------------------------------------------------
# The fast transform y = H_n x (or H_n^T x), along the last axis.
#
# Write the index of x as i = a * M + b (a < k, b < M). Then
#     y[a, b] = sum_{a', b'} H_k[a, a'] H_M[b, b'] x[a', b'] / sqrt(n):
# first the Walsh-Hadamard butterfly on each of the k rows of length M (log2 M stages;
# stage h maps each pair (u, v) at distance h to (u + v, u - v): that is H_2 (x) H_h),
# then the dense k x k product on every column, then the scale. Cost per vector:
# n log2 M additions + n k multiply-adds. H_n^T uses H_k^T (Sylvester is symmetric).
# The randomized transform multiplies by the signs s before (forward) or after
# (inverse); the Numba kernel fuses those products, the scale and the NaN/Inf check
# into its passes, does two butterfly stages per pass (radix 4: H_4 = H_2 (x) H_2 on
# the four elements at distances h, 2h) and the k-mix as a small BLAS product per row.
# The torch tier uses the same Kronecker factorisation with radix-32 dense stages, each
# a batched matrix product (O(n (k + 32 log_32 M)) flops; fewer, larger, GPU-friendly
# steps than 2-point butterflies, and 2-3x faster on this CPU).
# ----------------------------------------------------------------------------------------

BACKENDS = ("reference", "numba", "torch")


def _fwht_reference(x: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform along the last axis (length M = 2^m)."""
    lead, M = x.shape[:-1], x.shape[-1]
    h = 1
    while h < M:
        pairs = x.reshape(*lead, M // (2 * h), 2, h)      # pair (u, v) at distance h
        u, v = pairs[..., 0, :], pairs[..., 1, :]
        x = np.stack([u + v, u - v], axis=-2).reshape(*lead, M)
        h *= 2
    return x


def _transform_reference(x: np.ndarray, Hk: np.ndarray, M: int) -> np.ndarray:
    k = Hk.shape[0]
    y = _fwht_reference(x.reshape(*x.shape[:-1], k, M))        # butterflies on rows
    y = np.matmul(Hk.astype(x.dtype), y)                        # dense k-mix on columns
    return y.reshape(x.shape) / x.dtype.type(math.sqrt(k * M))


@njit(cache=True)
def _transform_numba(x, out, pre, post, Hk, M):
    """out[r] = post * H (pre * x[r]) for each row r of the 2-D x; H = (Hk (x) H_M)/sqrt(n).

    Returns 0 on success, 1 if x holds a NaN or Inf, 2 if the result overflowed.
    """
    rows, n = x.shape
    k = Hk.shape[0]
    scale = 1.0 / math.sqrt(n)
    for r in range(rows):
        v = out[r]
        for i in range(n):
            if not np.isfinite(x[r, i]):
                return 1
            v[i] = x[r, i] * pre[i]
        for a in range(k):                       # butterflies on each length-M row
            base, h = a * M, 1
            while 4 * h <= M:                    # two stages at once
                for start in range(base, base + M, 4 * h):
                    for i in range(start, start + h):
                        p, q, s, t = v[i], v[i + h], v[i + 2 * h], v[i + 3 * h]
                        v[i], v[i + h] = (p + q) + (s + t), (p - q) + (s - t)
                        v[i + 2 * h], v[i + 3 * h] = (p + q) - (s + t), (p - q) - (s - t)
                h *= 4
            if h < M:                            # one stage left when log2 M is odd
                for start in range(base, base + M, 2 * h):
                    for i in range(start, start + h):
                        u, w = v[i], v[i + h]
                        v[i], v[i + h] = u + w, u - w
        if k > 1:                                # dense k-mix (a small BLAS product)
            v[:] = np.dot(Hk, v.reshape(k, M)).ravel()
        for i in range(n):
            v[i] *= scale * post[i]
            if not np.isfinite(v[i]):
                return 2
    return 0


TORCH_RADIX = 32     # dense Sylvester blocks of the torch tier (measured: 16 and 64 no faster)


@lru_cache(maxsize=None)
def _kron_factors(k: int, M: int) -> tuple[int, ...]:
    """(k, f_1, ..., f_t): H_n = H_k (x) H_f1 (x) ... (x) H_ft, each f_i <= TORCH_RADIX."""
    fs = [k]
    while M > 1:
        fs.append(min(TORCH_RADIX, M))
        M //= fs[-1]
    return tuple(fs)


def _transform_torch(x, Hk: np.ndarray, M: int):
    """The same factorisation as matrix products (GPU-friendly): view x as a tensor of
    shape (N, k, f_1, ..., f_t); apply the last factor's matrix along the last axis and
    move that axis to the front of the factor axes; after t + 1 steps the axes are back
    in place and every factor has been applied along its own axis."""
    k = Hk.shape[0]
    fs = _kron_factors(k, M)
    mats = [torch.as_tensor(Hk, dtype=x.dtype, device=x.device)]
    mats += [torch.as_tensor(sylvester(f), dtype=x.dtype, device=x.device) for f in fs[1:]]
    y = x.reshape(-1, *fs)
    for H in reversed(mats):
        y = torch.movedim(torch.matmul(y, H.T), -1, 1)
    return y.reshape(x.shape) / math.sqrt(k * M)


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _check_axis(axis, shape) -> int:
    """axis as a Python int in [-ndim, ndim); TypeError for bool/float, ValueError if out
    of range."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for an array of shape {tuple(shape)}")
    return int(axis)


def _check_input(x, n: int, axis: int):
    """Validate x (numpy array-like or torch tensor) and axis; return (x as a float array
    or tensor, axis as an int). NaN/Inf are caught on the result (:func:`_check_result`)
    or inside the Numba kernel."""
    if _is_torch(x):
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    else:
        x = np.asarray(x)
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"expected a float32/float64 array, got dtype {x.dtype}")
    if len(x.shape) == 0:
        raise ValueError("expected an array with at least one dimension, got a scalar")
    axis = _check_axis(axis, x.shape)
    if x.shape[axis] != n:
        raise ValueError(f"axis {axis} has length {x.shape[axis]}, the transform has n={n} "
                         f"(array shape {tuple(x.shape)})")
    return x, axis


def _finite_sum(x) -> bool:
    """True iff the float64 sum of x is finite: then every entry is finite (NaN and Inf
    propagate through sums; float32 data cannot overflow a float64 sum)."""
    if _is_torch(x):
        total = x.detach().sum(dtype=torch.float64)
    else:
        with np.errstate(over="ignore", invalid="ignore"):     # inf + -inf: NaN, no warning
            total = x.sum(dtype=np.float64)
    return math.isfinite(float(total))       # for a tensor: one read-back to the host


def _all_finite(x) -> bool:
    return bool(x.isfinite().all() if _is_torch(x) else np.isfinite(x).all())


_OVERFLOW = "the transform overflowed the input's dtype (values near its maximum); rescale"


def _check_result(x, y) -> None:
    """Raise ValueError unless y = R x (R orthogonal, along some axis) is finite.

    One check of y suffices: column j of an orthogonal R has unit norm, so some
    R_ij != 0, and a NaN or Inf in x_j makes y_i = ... + R_ij x_j non-finite. So a finite
    y certifies a finite x; x is only looked at afterwards, to word the error (bad input,
    or an overflow of the dtype). For a tensor the check reads one number back to the
    host, a device sync on a GPU: the price of raising a Python error on bad data (an
    asynchronous device assert would leave the CUDA context unusable). Meta tensors have
    no values and are not checked.
    """
    if _is_torch(y) and y.device.type == "meta":
        return
    if _finite_sum(y):
        return
    if not _all_finite(x):
        raise ValueError("input contains NaN or Inf")
    if not _all_finite(y):
        raise ValueError(_OVERFLOW)
    raise ValueError("values so large that the float64 sum of the result overflows; rescale")


def hadamard_transform(x, axis: int = -1, backend: str | None = None,
                       transpose: bool = False):
    """y = H_n x along ``axis`` (or H_n^T x with ``transpose=True``), H_n orthonormal.

    x: numpy array (float32/float64; integers are promoted to float64) or torch tensor
    (floating, any device); the result has x's type, dtype, shape and device.
    backend: "reference" (numpy, readable), "numba" (jitted loops, CPU) or "torch";
    None picks "torch" for tensors and "numba" otherwise.

    A tensor on the numpy tiers ("reference", "numba") is copied to the CPU, computed in
    float32 (float16, bfloat16 and other low-precision dtypes) or its own float32/float64,
    and returned in its dtype on its device. Those tiers cannot carry gradients: for a
    tensor that requires grad (with grad mode on) they raise ValueError; use "torch",
    which is differentiable, or pass ``x.detach()`` / run under ``torch.no_grad()``.
    Raises ValueError for NaN/Inf input or a result that overflows the dtype.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) == 0:
        raise ValueError("expected an array with at least one dimension, got a scalar")
    n = int(shape[_check_axis(axis, shape)])
    return _rotate(x, n, axis, backend, transpose, None, None)


def _rotate(x, n: int, axis: int, backend: str | None, transpose: bool, pre, post):
    """post * H_n^(T) (pre * x) along axis; pre/post are sign vectors or None."""
    if backend is None:
        backend = "torch" if _is_torch(x) else "numba"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    k, M, _ = _require(n)
    x, axis = _check_input(x, n, axis)
    Hk = _base_matrix(k)
    Hk = np.ascontiguousarray(Hk.T) if transpose else Hk
    if not _is_torch(x):
        if backend == "torch":
            xt = torch.from_numpy(np.ascontiguousarray(x))
            return _rotate_torch(xt, Hk, M, axis, pre, post).numpy()
        return _rotate_numpy(x, Hk, M, axis, backend, pre, post)
    if backend == "torch":
        return _rotate_torch(x, Hk, M, axis, pre, post)
    # A tensor on a numpy tier: compute on the CPU in float32/float64, come back as x was.
    if x.device.type == "meta":
        raise ValueError(f"backend={backend!r} needs the tensor's values and a meta tensor "
                         f"has none; use backend='torch'")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"backend={backend!r} computes in numpy and cannot carry gradients "
                         f"of a tensor that requires grad; use backend='torch' "
                         f"(differentiable), or x.detach() / torch.no_grad()")
    work = x.detach().cpu()
    if work.dtype not in (torch.float32, torch.float64):
        work = work.to(torch.float32)              # float16, bfloat16, ...: float32 range
    y = torch.from_numpy(_rotate_numpy(work.numpy(), Hk, M, axis, backend, pre, post))
    y = y.to(x.dtype)
    if y.dtype != work.dtype and not _all_finite(y):  # finite in float32, not in x.dtype
        raise ValueError(_OVERFLOW)
    return y.to(x.device)


def _rotate_numpy(x: np.ndarray, Hk: np.ndarray, M: int, axis: int, backend: str,
                  pre, post) -> np.ndarray:
    """The "reference" and "numba" tiers on a checked numpy array."""
    xm = np.moveaxis(x, axis, -1)
    if backend == "numba":
        y = _apply_numba(xm, Hk, M, pre, post)        # checks NaN/Inf and overflow inline
    else:
        if pre is not None:
            xm = _scale_along(xm, pre, -1)
        with np.errstate(over="ignore", invalid="ignore"):    # overflow: our own error below
            y = _transform_reference(xm, Hk, M)
        if post is not None:
            y = _scale_along(y, post, -1)
        _check_result(x, y)
    return np.ascontiguousarray(np.moveaxis(y, -1, axis))


def _rotate_torch(x, Hk: np.ndarray, M: int, axis: int, pre, post):
    """The "torch" tier on a checked tensor: any device and floating dtype (computed in
    that dtype), differentiable; one host read-back per call (see _check_result)."""
    xm = torch.movedim(x, axis, -1)
    if pre is not None:
        xm = _scale_along(xm, pre, -1)
    y = _transform_torch(xm, Hk, M)
    if post is not None:
        y = _scale_along(y, post, -1)
    _check_result(x, y)
    return torch.movedim(y, -1, axis).contiguous()


def _apply_numba(xm: np.ndarray, Hk: np.ndarray, M: int, pre, post) -> np.ndarray:
    n = xm.shape[-1]
    flat = xm.reshape(-1, n)                      # a view when possible, else a copy
    out = np.empty(flat.shape, dtype=xm.dtype)
    ones = np.ones(n, dtype=xm.dtype)
    pre = ones if pre is None else pre.astype(xm.dtype)
    post = ones if post is None else post.astype(xm.dtype)
    status = _transform_numba(flat, out, pre, post, Hk.astype(xm.dtype), M)
    if status:
        raise ValueError("input contains NaN or Inf" if status == 1 else _OVERFLOW)
    return out.reshape(xm.shape)


# ----------------------------------------------------------------------------------------
# Rotations. A rotation is an orthogonal n x n matrix R with forward x -> R x and
# inverse y -> R^T y.
#   RandomizedHadamard(n, seed): R = H_n S, S = diag(s), s in {-1, +1}^n drawn from
#       numpy's default_rng(seed) as s = 1 - 2 * integers(0, 2, n). Stored as (n, seed)
#       plus the construction name and a SHA-256 of s, checked on reload.
#   RandomOrthogonal(n, seed): the explicit fallback for any n: R = Q from the QR
#       factorization G = Q R of a Gaussian matrix G from default_rng(seed), with the
#       columns' signs fixed so diag(R) > 0 (this makes Q Haar-distributed, and unique:
#       a full-rank G has exactly one such Q). Stored as (n, seed) plus a SHA-256 of G.
#
# What the checksums protect against: a numpy whose random stream for the seed differs
# (another bit generator, sampling algorithm or version), which would silently rebuild a
# different rotation than the one folded into stored weights. They hash what the seed
# determines exactly: the signs, and the bytes of G (little-endian float64). They do not
# hash Q: the QR's rounding differs between LAPACK/BLAS builds (by ~1e-15, harmless since
# Q itself is unique), so a hash of Q, even rounded, could report a false mismatch.
# ----------------------------------------------------------------------------------------

def random_signs(n: int, seed: int) -> np.ndarray:
    """The sign vector s in {-1, +1}^n of RandomizedHadamard(n, seed), float64."""
    rng = np.random.default_rng(seed)
    return 1.0 - 2.0 * rng.integers(0, 2, size=n)


def _signs_digest(s: np.ndarray) -> str:
    return hashlib.sha256((s < 0).astype(np.uint8).tobytes()).hexdigest()


def _check_seed(seed) -> int:
    return _as_int(seed, "seed", 0)


def _scale_along(x, s: np.ndarray, axis: int):
    """x * s broadcast along ``axis`` (numpy or torch, keeps dtype/device)."""
    shape = [1] * len(x.shape)
    shape[axis] = -1
    if _is_torch(x):
        return x * torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(shape)
    return x * s.astype(x.dtype).reshape(shape)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_stored(d, kind: str, layouts: dict[int, tuple[str, ...]]) -> None:
    """Check a stored rotation dict: its kind, a known integer version, and for that
    version every key in ``layouts[version]`` present with the right type. Raises a
    ValueError naming the problem (never a bare KeyError)."""
    if not isinstance(d, dict):
        raise ValueError(f"a stored rotation must be a dict, got {type(d).__name__}")
    if d.get("kind") != kind:
        raise ValueError(f"not a {kind!r} rotation dict: kind is {d.get('kind')!r}")
    version = d.get("version")
    if type(version) is not int or version not in layouts:      # not True, 1.0 or "1"
        raise ValueError(f"unsupported {kind!r} rotation dict version {version!r} "
                         f"(this code reads versions {sorted(layouts)})")
    for key in layouts[version]:
        if key not in d:
            raise ValueError(f"stored {kind!r} rotation dict (version {version}) lacks the "
                             f"key {key!r}: {d!r}")
        value = d[key]
        if key in ("n", "seed"):
            try:
                _as_int(value, f"stored {key!r}", 1 if key == "n" else 0)
            except ValueError as err:
                raise ValueError(f"{err} (in the {kind!r} rotation dict)") from None
        elif key == "construction" and not isinstance(value, str):
            raise ValueError(f"stored 'construction' must be a string, got {value!r}")
        elif key.endswith("_sha256") and not (isinstance(value, str)
                                                and _SHA256.fullmatch(value)):
            raise ValueError(f"stored {key!r} must be 64 lowercase hex digits, got {value!r}")


class RandomizedHadamard:
    """R = H_n diag(s): forward x -> H_n (s * x), inverse y -> s * (H_n^T y).

    Raises the clear ValueError of :func:`hadamard` for an unsupported n (and for
    n > MAX_ORDER); use :func:`make_rotation` with ``fallback="orthogonal"`` to opt into
    the dense fallback. ``forward``/``inverse`` take the backends of
    :func:`hadamard_transform`.
    """

    kind = "randomized_hadamard"

    def __init__(self, n: int, seed: int):
        self.n = _as_int(n, "Hadamard order", 1)
        self.seed = _check_seed(seed)
        if self.n > MAX_ORDER:
            raise ValueError(f"RandomizedHadamard(n={self.n}): n is larger than MAX_ORDER = "
                             f"{MAX_ORDER}; no weight dimension is that large (its signs "
                             f"alone would take {8 * self.n / 2**30:.0f} GiB)")
        self.construction = construction(self.n)     # raises for unsupported n
        self.signs = random_signs(self.n, self.seed)

    def forward(self, x, axis: int = -1, backend: str | None = None):
        return _rotate(x, self.n, axis, backend, False, self.signs, None)

    def inverse(self, y, axis: int = -1, backend: str | None = None):
        return _rotate(y, self.n, axis, backend, True, None, self.signs)

    def matrix(self) -> np.ndarray:
        """Dense R = H_n diag(s), float64 (for checks; n^2 memory, n <= MAX_DENSE_ORDER)."""
        R = hadamard(self.n)
        R *= self.signs[None, :]
        return R

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": 1, "n": self.n, "seed": self.seed,
                "construction": self.construction, "signs_sha256": _signs_digest(self.signs)}

    @classmethod
    def from_dict(cls, d: dict) -> "RandomizedHadamard":
        _check_stored(d, cls.kind, {1: ("n", "seed", "construction", "signs_sha256")})
        rot = cls(d["n"], d["seed"])
        if rot.construction != d["construction"]:
            raise ValueError(f"stored construction {d['construction']!r} differs from this "
                             f"version's {rot.construction!r}")
        if _signs_digest(rot.signs) != d["signs_sha256"]:
            raise ValueError("the signs drawn from the stored seed do not match the stored "
                             "checksum (different numpy random stream?)")
        return rot

    def __repr__(self) -> str:
        return f"RandomizedHadamard(n={self.n}, seed={self.seed}, {self.construction})"


def _check_dense_order(n, what: str) -> int:
    n = _as_int(n, "n", 1)
    if n > MAX_DENSE_ORDER:
        raise ValueError(f"{what}(n={n}) would build a dense {n} x {n} matrix; the dense "
                         f"fallback is limited to n <= MAX_DENSE_ORDER = {MAX_DENSE_ORDER}")
    return n


def _gaussian(n: int, seed: int) -> np.ndarray:
    """The n x n standard normal matrix G that seeds RandomOrthogonal(n, seed)."""
    return np.random.default_rng(seed).standard_normal((n, n))


def _orthogonal_from_gaussian(G: np.ndarray) -> np.ndarray:
    """The Q of G = Q R with diag(R) > 0 (Householder QR, then flip columns' signs)."""
    Q, R = np.linalg.qr(G)
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)[None, :]


def _gaussian_digest(G: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(G, dtype="<f8").tobytes()).hexdigest()


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """Haar-random orthogonal n x n matrix (float64) from default_rng(seed)."""
    n = _check_dense_order(n, "random_orthogonal")
    return _orthogonal_from_gaussian(_gaussian(n, _check_seed(seed)))


class RandomOrthogonal:
    """The explicit fallback for any n <= MAX_DENSE_ORDER: a dense seeded random
    orthogonal R (O(n^2) per vector).

    Every backend computes the same dense product with the library of the input: numpy's
    matmul (BLAS) for a numpy array, torch.matmul for a tensor, so a tensor keeps its
    device, dtype and gradients whatever the backend (there is no faster algorithm for a
    dense R to tier, so ``backend`` is only checked for validity). NaN/Inf input and an
    overflowing result raise ValueError, as for :class:`RandomizedHadamard`.
    """

    kind = "random_orthogonal"
    _CONSTRUCTION = "qr(gaussian)"

    def __init__(self, n: int, seed: int):
        self.n = _check_dense_order(n, "RandomOrthogonal")
        self.seed = _check_seed(seed)
        G = _gaussian(self.n, self.seed)
        self.gaussian_sha256 = _gaussian_digest(G)
        self._Q = _orthogonal_from_gaussian(G)
        self.construction = self._CONSTRUCTION

    def _apply(self, x, Q: np.ndarray, axis: int, backend: str | None):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        x, axis = _check_input(x, self.n, axis)
        if _is_torch(x):
            Qt = torch.as_tensor(Q, dtype=x.dtype, device=x.device)
            y = torch.movedim(torch.movedim(x, axis, -1) @ Qt.T, -1, axis).contiguous()
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow: our own error
                y = np.moveaxis(x, axis, -1) @ Q.T.astype(x.dtype)
            y = np.ascontiguousarray(np.moveaxis(y, -1, axis))
        _check_result(x, y)
        return y

    def forward(self, x, axis: int = -1, backend: str | None = None):
        return self._apply(x, self._Q, axis, backend)

    def inverse(self, y, axis: int = -1, backend: str | None = None):
        return self._apply(y, self._Q.T, axis, backend)

    def matrix(self) -> np.ndarray:
        return self._Q.copy()

    def to_dict(self) -> dict:
        """Version 2 (since the checksum moved from Q to G; version 1 is still read)."""
        return {"kind": self.kind, "version": 2, "n": self.n, "seed": self.seed,
                "construction": self.construction, "gaussian_sha256": self.gaussian_sha256}

    @classmethod
    def from_dict(cls, d: dict) -> "RandomOrthogonal":
        _check_stored(d, cls.kind, {1: ("n", "seed", "construction", "matrix_sha256"),
                                    2: ("n", "seed", "construction", "gaussian_sha256")})
        if d["construction"] != cls._CONSTRUCTION:
            raise ValueError(f"stored construction {d['construction']!r} is not this "
                             f"version's {cls._CONSTRUCTION!r}")
        rot = cls(d["n"], d["seed"])
        if d["version"] == 2 and rot.gaussian_sha256 != d["gaussian_sha256"]:
            raise ValueError("the Gaussian matrix drawn from the stored seed does not match "
                             "the stored checksum (different numpy random stream?)")
        if d["version"] == 1:         # legacy: a hash of Q rounded to 6 decimals
            legacy = hashlib.sha256(np.round(rot._Q, 6).tobytes()).hexdigest()
            if legacy != d["matrix_sha256"]:
                raise ValueError("the matrix drawn from the stored seed does not match the "
                                 "stored version-1 checksum (of Q rounded to 6 decimals: a "
                                 "different numpy random stream, or only a different "
                                 "LAPACK's rounding; re-save with version 2)")
        return rot

    def __repr__(self) -> str:
        return f"RandomOrthogonal(n={self.n}, seed={self.seed})"


def make_rotation(n: int, seed: int, fallback: str | None = None):
    """RandomizedHadamard(n, seed) if n is supported; otherwise the ValueError, unless the
    caller opts in with ``fallback="orthogonal"`` (then RandomOrthogonal(n, seed))."""
    if fallback not in (None, "orthogonal"):
        raise ValueError(f"fallback must be None or 'orthogonal', got {fallback!r}")
    if is_supported(n) or fallback is None:
        return RandomizedHadamard(n, seed)
    return RandomOrthogonal(n, seed)


def rotation_from_dict(d: dict):
    """Rebuild a rotation from its ``to_dict()``; None stays None."""
    if d is None:
        return None
    kinds = {RandomizedHadamard.kind: RandomizedHadamard, RandomOrthogonal.kind: RandomOrthogonal}
    if not isinstance(d, dict) or d.get("kind") not in kinds:
        raise ValueError(f"unknown rotation dict: {d!r}")
    return kinds[d["kind"]].from_dict(d)


# ----------------------------------------------------------------------------------------
# Rotating a linear layer y = W x + b, W of shape (out, in).
# With input rotation R_in (x' = R_in x) and output rotation R_out (y' = R_out y):
#     y' = R_out W R_in^T x' + R_out b,   so   W' = R_out W R_in^T,  b' = R_out b,
# and y = R_out^T y'. Row o of W R_in^T is R_in applied to row o of W (forward along the
# input axis); R_out W applies R_out to every column (forward along the output axis).
# To undo: W = R_out^T W' R_in. What must be stored: each rotation's to_dict().
# ----------------------------------------------------------------------------------------

def rotate_weight(W, R_in=None, R_out=None, backend: str | None = None):
    """W' = R_out W R_in^T for W of shape (out, in); either rotation may be None."""
    _check_weight(W, R_in, R_out)
    if R_in is not None:
        W = R_in.forward(W, axis=1, backend=backend)
    if R_out is not None:
        W = R_out.forward(W, axis=0, backend=backend)
    return W


def unrotate_weight(W, R_in=None, R_out=None, backend: str | None = None):
    """W = R_out^T W' R_in: the inverse of :func:`rotate_weight`."""
    _check_weight(W, R_in, R_out)
    if R_in is not None:
        W = R_in.inverse(W, axis=1, backend=backend)
    if R_out is not None:
        W = R_out.inverse(W, axis=0, backend=backend)
    return W


def _check_weight(W, R_in, R_out) -> None:
    if len(W.shape) != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(W.shape)}")
    for R, dim, side in ((R_in, 1, "input"), (R_out, 0, "output")):
        if R is not None and R.n != W.shape[dim]:
            raise ValueError(f"{side} rotation has n={R.n} but the weight of shape "
                             f"{tuple(W.shape)} has {W.shape[dim]} on that side")


def rotate_linear(linear, R_in=None, R_out=None):
    """A new torch.nn.Linear with W' = R_out W R_in^T and b' = R_out b."""
    out = copy.deepcopy(linear)
    with torch.no_grad():
        out.weight.copy_(rotate_weight(linear.weight.detach(), R_in, R_out, backend="torch"))
        if linear.bias is not None and R_out is not None:
            out.bias.copy_(R_out.forward(linear.bias.detach(), backend="torch"))
    return out


class OnlineRotation(torch.nn.Module):
    """x -> R x on the last axis, as a layer (the online transform of a rotated input)."""

    def __init__(self, rotation):
        super().__init__()
        self.rotation = rotation

    def forward(self, x):
        return self.rotation.forward(x, backend="torch")


class RotatedLinear(torch.nn.Module):
    """Same function as ``linear``, computed in rotated coordinates:
    x' = R_in x (online), y' = W' x' + b', y = R_out^T y' (online)."""

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

def rotate_llama_block(layer, R_res, R_head=None, R_ffn=None, backend: str = "torch"):
    """A rotated deep copy of a transformers LlamaDecoderLayer (see the block above).

    ``backend`` rotates the weights ("numba" is faster for CPU weights); the online
    rotations of the returned block always use torch.
    """
    new = copy.deepcopy(layer)
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
    return new


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
    """Wraps a rotated block: h -> R^T block'(R h, ...); a drop-in for the original."""

    def __init__(self, rotated_layer, R_res):
        super().__init__()
        self.layer, self.R_res = rotated_layer, R_res

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(self.R_res.forward(hidden_states, backend="torch"), *args, **kwargs)
        if isinstance(out, tuple):
            return (self.R_res.inverse(out[0], backend="torch"),) + out[1:]
        return self.R_res.inverse(out, backend="torch")


# ----------------------------------------------------------------------------------------
# Statistics.
#   Incoherence  mu(W) = max_ij |W_ij| sqrt(m n) / ||W||_F  for W of shape (m, n):
#       1 for a flat matrix (all |W_ij| equal), up to sqrt(mn) for a single spike.
#   Excess kurtosis E[(w - mean)^4] / var^2 - 3 of all entries (0 for a Gaussian).
#   Uniformity on the sphere: cut W (row-major, i.e. along the input dimension) into
#       groups of L consecutive weights and normalise each group to unit length:
#       v = w / ||w||. If v is uniform on S^{L-1}, every v_i^2 ~ Beta(1/2, (L-1)/2).
#       We report the Kolmogorov-Smirnov distance between the empirical law of all
#       v_i^2 and that Beta law.
# ----------------------------------------------------------------------------------------

def _stat_input(W) -> np.ndarray:
    """W (numpy or torch, any real dtype) as a non-empty, finite float64 array."""
    if _is_torch(W):
        if W.is_complex():
            raise TypeError(f"expected a real numeric tensor, got dtype {W.dtype}")
        W = W.detach().cpu().to(torch.float64).numpy()      # also bfloat16, on any device
    W = np.asarray(W)
    if W.dtype.kind not in "biuf":
        raise TypeError(f"expected a real numeric array, got dtype {W.dtype}")
    W = W.astype(np.float64, copy=False)
    if W.size == 0:
        raise ValueError(f"expected a non-empty array, got shape {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W contains NaN or Inf")
    return W


def incoherence(W) -> float:
    """mu(W) = max|W_ij| sqrt(mn) / ||W||_F."""
    W = _stat_input(W)
    if W.ndim != 2 or not np.any(W):
        raise ValueError(f"expected a non-zero 2-D matrix, got shape {W.shape}")
    A = np.abs(W)
    return float(math.sqrt(W.size) / np.linalg.norm(A / A.max()))   # scaled: no overflow


def excess_kurtosis(W) -> float:
    """Excess kurtosis of all entries (0 for a Gaussian, -1.2 for a uniform law)."""
    w = _stat_input(W).ravel()
    w = w / max(np.abs(w).max(), 1.0)           # the mean of huge values cannot overflow
    d = w - w.mean()
    spread = np.abs(d).max()
    if spread == 0:
        raise ValueError("excess kurtosis is undefined for constant input (zero variance)")
    d2 = (d / spread) ** 2                      # scale-free; d^4 cannot under/overflow
    return float(np.mean(d2 * d2) / np.mean(d2) ** 2 - 3.0)


def sphere_coordinates(W, group: int = 128) -> np.ndarray:
    """v_i^2 of every unit-normalised group of ``group`` consecutive weights.

    Groups are cut from the row-major flattening of W, i.e. along the input dimension;
    when the row length is not a multiple of ``group`` (576 = 4.5 * 128) some groups span
    the end of one row and the start of the next. All-zero groups are skipped.
    """
    group = _as_int(group, "group", 1)
    W = _stat_input(W)
    if W.size % group:
        raise ValueError(f"W has {W.size} entries, not a multiple of group={group}")
    G = W.reshape(-1, group)
    peak = np.abs(G).max(axis=1)
    G = G[peak > 0] / peak[peak > 0, None]      # skip zero groups; scale: no overflow
    return ((G / np.linalg.norm(G, axis=1, keepdims=True)) ** 2).ravel()


def beta_law_ks(W, group: int = 128) -> float:
    """KS distance between the law of the v_i^2 and Beta(1/2, (group-1)/2)."""
    from scipy import stats
    group = _as_int(group, "group", 2)           # group = 1: every v_1^2 = 1, no Beta law
    v2 = np.sort(sphere_coordinates(W, group))
    if v2.size == 0:
        raise ValueError("every group of W is zero: no directions to compare with the "
                         "Beta law")
    cdf = stats.beta(0.5, (group - 1) / 2).cdf(v2)
    i = np.arange(1, v2.size + 1)
    return float(max(np.max(i / v2.size - cdf), np.max(cdf - (i - 1) / v2.size)))
