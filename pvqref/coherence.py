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
  small factor k): :func:`hadamard`, :func:`is_supported`, :func:`supported_sizes`.
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
    """(k, M = 2^m, construction of k) with n = k * M and k smallest; None if unsupported."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        return None
    for k, name in sorted(_base_constructions().items()):
        if n % k == 0:
            M = n // k
            if M & (M - 1) == 0:
                return k, M, name
    return None


def is_supported(n: int) -> bool:
    """True if :func:`hadamard` constructs an order-n Hadamard matrix."""
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


def _require(n: int) -> tuple[int, int, str]:
    dec = _decompose(n)
    if dec is None:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"Hadamard order must be a positive integer, got {n!r}")
        below = max((s for s in range(max(1, n - 512), n) if is_supported(s)), default=None)
        above = next(s for s in range(n + 1, 4 * n + 2) if is_supported(s))
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

    Dense: n^2 doubles (n = 16384 takes 2 GiB). Raises ValueError for unsupported n.
    """
    k, M, _ = _require(n)
    return np.kron(_base_matrix(k), sylvester(M)).astype(np.float64) / math.sqrt(n)


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


def _check_input(x, n: int, axis: int, check_finite: bool = True):
    """Validate x (numpy array-like or torch tensor); return it as a float array/tensor."""
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
    if not -len(x.shape) <= axis < len(x.shape):
        raise ValueError(f"axis {axis} is out of range for an array of shape {tuple(x.shape)}")
    if x.shape[axis] != n:
        raise ValueError(f"axis {axis} has length {x.shape[axis]}, the transform has n={n} "
                         f"(array shape {tuple(x.shape)})")
    if check_finite:
        _check_finite(x)
    return x


def _finite_sum(x) -> bool:
    """True iff the float64 sum of x is finite: then every entry is finite (NaN and Inf
    propagate through sums; float32 data cannot overflow a float64 sum)."""
    total = x.sum(dtype=torch.float64) if _is_torch(x) else x.sum(dtype=np.float64)
    return math.isfinite(float(total))


def _check_finite(x) -> None:
    """Raise ValueError on NaN/Inf (fast path: a finite float64 sum)."""
    if _finite_sum(x):
        return
    if not bool(x.isfinite().all() if _is_torch(x) else np.isfinite(x).all()):
        raise ValueError("input contains NaN or Inf")
    raise ValueError("input values are so large that their sum overflows float64; rescale")


_OVERFLOW = "the transform overflowed the input's dtype (values near its maximum); rescale"


def hadamard_transform(x, axis: int = -1, backend: str | None = None,
                       transpose: bool = False):
    """y = H_n x along ``axis`` (or H_n^T x with ``transpose=True``), H_n orthonormal.

    x: numpy array (float32/float64; integers are promoted to float64) or torch tensor
    (floating, any device); the result has x's type, dtype, shape and device.
    backend: "reference" (numpy, readable), "numba" (jitted loops, CPU) or "torch";
    None picks "torch" for tensors and "numba" otherwise.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) == 0:
        raise ValueError("expected an array with at least one dimension, got a scalar")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for an array of shape {tuple(shape)}")
    n = int(shape[axis])
    return _rotate(x, n, axis, backend, transpose, None, None)


def _rotate(x, n: int, axis: int, backend: str | None, transpose: bool, pre, post,
            checked: bool = False):
    """post * H_n^(T) (pre * x) along axis; pre/post are sign vectors or None."""
    is_t = _is_torch(x)
    if backend is None:
        backend = "torch" if is_t else "numba"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    k, M, _ = _require(n)
    if not checked:                               # the numba kernel checks NaN/Inf inline
        x = _check_input(x, n, axis, check_finite=backend != "numba")
    if is_t and backend != "torch":               # numpy tiers on a tensor: round trip
        y = _rotate(x.detach().cpu().numpy(), n, axis, backend, transpose, pre, post, True)
        return torch.from_numpy(y).to(x.device)
    if not is_t and backend == "torch":
        xt = torch.from_numpy(np.ascontiguousarray(x))
        return _rotate(xt, n, axis, backend, transpose, pre, post, True).numpy()
    Hk = _base_matrix(k)
    Hk = np.ascontiguousarray(Hk.T) if transpose else Hk
    move = (lambda t, a, b: torch.movedim(t, a, b)) if is_t else np.moveaxis
    xm = move(x, axis, -1)
    if backend == "numba":
        y = _apply_numba(xm, Hk, M, pre, post)
    else:
        if pre is not None:
            xm = _scale_along(xm, pre, -1)
        with np.errstate(over="ignore", invalid="ignore"):    # overflow: our own error below
            y = _transform_torch(xm, Hk, M) if is_t else _transform_reference(xm, Hk, M)
        if post is not None:
            y = _scale_along(y, post, -1)
        if not _finite_sum(y):
            raise ValueError(_OVERFLOW)
    y = move(y, -1, axis)
    return y.contiguous() if is_t else np.ascontiguousarray(y)


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
#       factorization G = Q R of a Gaussian matrix from default_rng(seed), with the
#       columns' signs fixed so diag(R) > 0 (this makes Q Haar-distributed).
# ----------------------------------------------------------------------------------------

def random_signs(n: int, seed: int) -> np.ndarray:
    """The sign vector s in {-1, +1}^n of RandomizedHadamard(n, seed), float64."""
    rng = np.random.default_rng(seed)
    return 1.0 - 2.0 * rng.integers(0, 2, size=n)


def _signs_digest(s: np.ndarray) -> str:
    return hashlib.sha256((s < 0).astype(np.uint8).tobytes()).hexdigest()


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _scale_along(x, s: np.ndarray, axis: int):
    """x * s broadcast along ``axis`` (numpy or torch, keeps dtype/device)."""
    shape = [1] * len(x.shape)
    shape[axis] = -1
    if _is_torch(x):
        return x * torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(shape)
    return x * s.astype(x.dtype).reshape(shape)


class RandomizedHadamard:
    """R = H_n diag(s): forward x -> H_n (s * x), inverse y -> s * (H_n^T y).

    Raises the clear ValueError of :func:`hadamard` for an unsupported n; use
    :func:`make_rotation` with ``fallback="orthogonal"`` to opt into the dense fallback.
    """

    kind = "randomized_hadamard"

    def __init__(self, n: int, seed: int):
        self.n = int(n)
        self.seed = _check_seed(seed)
        self.construction = construction(n)          # raises for unsupported n
        self.signs = random_signs(self.n, self.seed)

    def forward(self, x, axis: int = -1, backend: str | None = None):
        return _rotate(x, self.n, axis, backend, False, self.signs, None)

    def inverse(self, y, axis: int = -1, backend: str | None = None):
        return _rotate(y, self.n, axis, backend, True, None, self.signs)

    def matrix(self) -> np.ndarray:
        """Dense R = H_n diag(s), float64 (for checks; n^2 memory)."""
        return hadamard(self.n) * self.signs[None, :]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": 1, "n": self.n, "seed": self.seed,
                "construction": self.construction, "signs_sha256": _signs_digest(self.signs)}

    @classmethod
    def from_dict(cls, d: dict) -> "RandomizedHadamard":
        _check_kind(d, cls.kind)
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


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """Haar-random orthogonal n x n matrix (float64) from default_rng(seed)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    G = np.random.default_rng(_check_seed(seed)).standard_normal((n, n))
    Q, R = np.linalg.qr(G)
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)[None, :]


class RandomOrthogonal:
    """The explicit fallback for any n: a dense seeded random orthogonal R (O(n^2) per
    vector). All backends do the same dense product (numpy's BLAS for "reference" and
    "numba": a jitted loop would only be slower; torch.matmul for "torch")."""

    kind = "random_orthogonal"

    def __init__(self, n: int, seed: int):
        self.n, self.seed = int(n), _check_seed(seed)
        self._Q = random_orthogonal(self.n, self.seed)
        self.construction = "qr(gaussian)"

    def _apply(self, x, Q: np.ndarray, axis: int, backend: str | None):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        x = _check_input(x, self.n, axis)
        if _is_torch(x):
            Qt = torch.as_tensor(Q, dtype=x.dtype, device=x.device)
            return torch.movedim(torch.movedim(x, axis, -1) @ Qt.T, -1, axis).contiguous()
        y = np.moveaxis(x, axis, -1) @ Q.T.astype(x.dtype)
        return np.ascontiguousarray(np.moveaxis(y, -1, axis))

    def forward(self, x, axis: int = -1, backend: str | None = None):
        return self._apply(x, self._Q, axis, backend)

    def inverse(self, y, axis: int = -1, backend: str | None = None):
        return self._apply(y, self._Q.T, axis, backend)

    def matrix(self) -> np.ndarray:
        return self._Q.copy()

    def to_dict(self) -> dict:
        digest = hashlib.sha256(np.round(self._Q, 6).tobytes()).hexdigest()
        return {"kind": self.kind, "version": 1, "n": self.n, "seed": self.seed,
                "construction": self.construction, "matrix_sha256": digest}

    @classmethod
    def from_dict(cls, d: dict) -> "RandomOrthogonal":
        _check_kind(d, cls.kind)
        rot = cls(d["n"], d["seed"])
        if rot.to_dict()["matrix_sha256"] != d["matrix_sha256"]:
            raise ValueError("the matrix drawn from the stored seed does not match the "
                             "stored checksum (different numpy random stream or LAPACK?)")
        return rot

    def __repr__(self) -> str:
        return f"RandomOrthogonal(n={self.n}, seed={self.seed})"


def _check_kind(d: dict, kind: str) -> None:
    if not isinstance(d, dict) or d.get("kind") != kind or d.get("version") != 1:
        raise ValueError(f"not a version-1 {kind!r} rotation dict: {d!r}")


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
#       groups of L consecutive weights and normalise each group to unit length: v = w / ||w||. If v is uniform on S^{L-1},
#       every v_i^2 ~ Beta(1/2, (L-1)/2). We report the Kolmogorov-Smirnov distance
#       between the empirical law of all v_i^2 and that Beta law.
# ----------------------------------------------------------------------------------------

def _as_float64(W) -> np.ndarray:
    if _is_torch(W):
        W = W.detach().cpu().numpy()
    return np.asarray(W, dtype=np.float64)


def incoherence(W) -> float:
    """mu(W) = max|W_ij| sqrt(mn) / ||W||_F."""
    W = _as_float64(W)
    if W.ndim != 2 or not np.any(W):
        raise ValueError(f"expected a non-zero 2-D matrix, got shape {W.shape}")
    return float(np.abs(W).max() * math.sqrt(W.size) / np.linalg.norm(W))


def excess_kurtosis(W) -> float:
    """Excess kurtosis of all entries (0 for a Gaussian, -1.2 for a uniform law)."""
    w = _as_float64(W).ravel()
    w2 = (w - w.mean()) ** 2
    return float(np.mean(w2 * w2) / np.mean(w2) ** 2 - 3.0)


def sphere_coordinates(W, group: int = 128) -> np.ndarray:
    """v_i^2 of every unit-normalised group of ``group`` consecutive weights.

    Groups are cut from the row-major flattening of W, i.e. along the input dimension;
    when the row length is not a multiple of ``group`` (576 = 4.5 * 128) some groups span
    the end of one row and the start of the next. All-zero groups are skipped.
    """
    W = _as_float64(W)
    if W.size % group:
        raise ValueError(f"W has {W.size} entries, not a multiple of group={group}")
    G = W.reshape(-1, group)
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    return ((G[keep] / norms[keep]) ** 2).ravel()


def beta_law_ks(W, group: int = 128) -> float:
    """KS distance between the law of the v_i^2 and Beta(1/2, (group-1)/2)."""
    from scipy import stats
    v2 = np.sort(sphere_coordinates(W, group))
    cdf = stats.beta(0.5, (group - 1) / 2).cdf(v2)
    i = np.arange(1, v2.size + 1)
    return float(max(np.max(i / v2.size - cdf), np.max(cdf - (i - 1) / v2.size)))
