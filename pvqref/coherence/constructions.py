"""Hadamard matrices of order n = k * 2^m: GF(p^e) arithmetic, Paley I/II, Sylvester.

What sizes are supported (:func:`base_orders`, :func:`is_supported`,
:func:`supported_sizes`), how each is built (:func:`construction`) and the dense matrix
(:func:`hadamard`). NumPy and Python integers only: this file imports neither torch nor
Numba. The fast transform that applies H_n without the matrix is in ``transform.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .. import _checks

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
# the O(n log n) butterfly; the dense k-mix costs k multiply-adds per coordinate); when
# several Paley constructions give that k we prefer prime fields to prime-power fields,
# then Paley I to Paley II. Equivalently: each constructed k is the smallest one with its
# odd part, so n = o * 2^v (o odd) is supported iff the factor k = o * 2^j kept for o has
# j <= v, and that k is then the only choice.
#
# Constructed factors are bounded by MAX_BASE_ORDER (1024) so the dense k x k part stays
# small: H_k takes at most 8 MiB (int64, k = 1020) and is built in about 50 ms on first
# use (then cached); the list of factors is built lazily (not on import) in a few ms.
# 1024 covers every LLaMA-family width, 11008 = 344 * 32 (Paley I over GF(7^3)) included,
# and also Llama-1-65B's 22016 = 344 * 64, Falcon-7B's 4544 = 284 * 16 and Qwen2-72B's
# 29568 = 924 * 32. A larger k makes the k-mix dominate (at k = 2048 it costs per
# coordinate what a dense 2048 x 2048 rotation does, and H_k takes 32 MiB).
# ----------------------------------------------------------------------------------------

MAX_BASE_ORDER = 1024
MAX_DENSE_ORDER = 16384     # largest n for the dense matrices (hadamard, RandomOrthogonal):
                            # n^2 float64 = 2 GiB at 16384; larger n: use the fast transform
MAX_ORDER = 2 ** 26         # largest n of a RandomizedHadamard (67 million, > 1000 times any
                            # LLM dimension; its signs alone take 8n bytes)


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q = p^e, p prime, e >= 1; None if q is not a prime power."""
    if q < 2:
        return None
    p = next((d for d in range(2, math.isqrt(q) + 1) if q % d == 0), q)  # smallest prime
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
    coefficients of the polynomial representing the element).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
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
    """Integer Hadamard matrix of order q + 1, q a prime power = 3 (mod 4).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    if _prime_power(q) is None or q % 4 != 3:
        raise ValueError(f"Paley I needs a prime power q = 3 (mod 4), got {q}")
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:], C[1:, 0], C[1:, 1:] = 1, -1, quadratic_character(q)
    return np.eye(q + 1, dtype=np.int64) + C


def paley2(q: int) -> np.ndarray:
    """Integer Hadamard matrix of order 2(q + 1), q a prime power = 1 (mod 4).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    if _prime_power(q) is None or q % 4 != 1:
        raise ValueError(f"Paley II needs a prime power q = 1 (mod 4), got {q}")
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:], C[1:, 0], C[1:, 1:] = 1, 1, quadratic_character(q)
    zero_block = np.array([[1, -1], [-1, -1]])
    sign_block = np.array([[1, 1], [1, -1]])
    return np.kron(C, sign_block) + np.kron((C == 0).astype(np.int64), zero_block)


def sylvester(M: int) -> np.ndarray:
    """Integer Sylvester-Hadamard matrix of order M = 2^m (natural order).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    if M < 1 or M & (M - 1):
        raise ValueError(f"Sylvester needs a power of two, got {M}")
    H = np.ones((1, 1), dtype=np.int64)
    while H.shape[0] < M:
        H = np.block([[H, H], [H, -H]])
    return H


@lru_cache(maxsize=None)
def _base_constructions() -> dict[int, str]:
    """{k: construction} for every constructed factor k <= MAX_BASE_ORDER that is not a
    power of two times a smaller constructed factor (those come from Sylvester): the
    smallest constructed k of each odd part.

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
    odd_parts = {1}
    for k in sorted(found):              # keep the smallest k of each odd part
        if _odd_part(k)[0] not in odd_parts:
            base[k] = found[k]
            odd_parts.add(_odd_part(k)[0])
    return base


@lru_cache(maxsize=None)
def _factor_of_odd_part() -> dict[int, int]:
    """{odd part of k: k} over the constructed factors (one factor per odd part)."""
    return {_odd_part(k)[0]: k for k in _base_constructions()}


def _odd_part(n: int) -> tuple[int, int]:
    """(o, v) with n = o * 2^v, o odd (n >= 1)."""
    v = (n & -n).bit_length() - 1
    return n >> v, v


def base_orders() -> list[int]:
    """The constructed factors k (up to MAX_BASE_ORDER): every supported n is k * 2^m.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return sorted(_base_constructions())


def _decompose(n: int) -> tuple[int, int, str] | None:
    """(k, M = 2^m, construction of k) with n = k * M and k smallest; None if unsupported
    (including n that is not a positive integer). One look-up, whatever the size of n:
    the factor kept for n's odd part, if its power of two is not larger than n's."""
    try:
        n = _checks.integer(n, "n", 1)
    except (TypeError, ValueError):
        return None
    o, v = _odd_part(n)
    k = _factor_of_odd_part().get(o)
    if k is None or _odd_part(k)[1] > v:
        return None
    return k, n // k, _base_constructions()[k]


def _unsupported_reason(n: int) -> str:
    """Why the positive integer n (unsupported) has no construction here."""
    o, v = _odd_part(n)
    if n > 2 and v < 2:
        return f"{n} is not a multiple of 4; a Hadamard order must be 1, 2 or a multiple of 4"
    k = _factor_of_odd_part().get(o)
    if k is not None:
        return (f"n = {o} * 2^{v}, and the smallest constructed factor with odd part {o} "
                f"is k = {k} = {o} * 2^{_odd_part(k)[1]}, which does not divide n")
    return (f"n = {o} * 2^{v}, and no factor k = {o} * 2^j <= {MAX_BASE_ORDER} comes from "
            f"Paley I (q = k - 1 a prime power = 3 mod 4) or Paley II (q = k/2 - 1 a prime "
            f"power = 1 mod 4)")


def _bases_text() -> str:
    """base_orders() for an error message: all of them, or the first 24, '...', the last."""
    ks = base_orders()
    return str(ks) if len(ks) <= 30 else f"[{', '.join(map(str, ks[:24]))}, ..., {ks[-1]}]"


def is_supported(n: int) -> bool:
    """True if an order-n Hadamard matrix is constructed here (n = k * 2^m with k in
    :func:`base_orders`): :func:`hadamard_transform` handles length n. (The dense
    :func:`hadamard` also needs n <= MAX_DENSE_ORDER.)

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    return _decompose(n) is not None


def supported_sizes(max_n: int) -> list[int]:
    """All supported orders n <= max_n, ascending.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    sizes = set()
    for k in base_orders():
        n = k
        while n <= max_n:
            sizes.add(n)
            n *= 2
    return sorted(sizes)


def construction(n: int) -> str:
    """Human-readable recipe of H_n, e.g. ``"paley2(q=17) (x) sylvester(16)"``.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    k, M, name = _require(n)
    if k == 1:
        return f"sylvester({M})"
    return name if M == 1 else f"{name} (x) sylvester({M})"


def _require(n: int) -> tuple[int, int, str]:
    """(k, M, construction of k) for a supported order n; TypeError for a non-integer n,
    ValueError for n < 1 or an unsupported n (naming the base orders and the fallback)."""
    n = _checks.integer(n, "Hadamard order", 1)
    dec = _decompose(n)
    if dec is None:
        raise ValueError(
            f"no Hadamard matrix of order n={n} is constructed here: unsupported size "
            f"({_unsupported_reason(n)}). "
            f"Supported: n = k * 2^m with k in {_bases_text()} ({len(base_orders())} "
            f"Sylvester and Paley I/II factors up to {MAX_BASE_ORDER}; base_orders() lists "
            f"them). For other sizes "
            f"choose the explicit fallback: make_rotation(n, seed, fallback='orthogonal') "
            f"or RandomOrthogonal(n, seed), a seeded dense random orthogonal matrix "
            f"(O(n^2) per vector).")
    return dec


def construction_table(widths) -> list[tuple[int, bool, str]]:
    """Rows ``(n, supported, how)`` for the given widths, in their order: ``how`` is
    :func:`construction` for a supported n and the reason otherwise. For example ::

        for n, ok, how in construction_table([4096, 11008, 172]):
            print(f"{n:>6}  {'yes' if ok else 'no':3}  {how}")

    prints ``4096 yes sylvester(4096)``, ``11008 yes paley1(q=343) (x) sylvester(32)``
    and ``172 no n = 43 * 2^2, and the smallest constructed factor with odd part 43 is
    k = 344 = 43 * 2^3, which does not divide n``. A width that is not a positive integer
    raises as in :func:`construction`.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    rows = []
    for n in widths:
        n = _checks.integer(n, "Hadamard order", 1)
        ok = is_supported(n)
        rows.append((n, ok, construction(n) if ok else _unsupported_reason(n)))
    return rows


@lru_cache(maxsize=16)              # 16 factors: <= 96 MiB at k <= 1024
def _base_matrix(k: int) -> np.ndarray:
    """Integer Hadamard matrix of the constructed factor k (cached: do not modify)."""
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

    Chapter: Spherical coherence processing (book/coherence.ipynb).
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
