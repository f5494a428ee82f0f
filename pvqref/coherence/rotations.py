"""Seeded rotations: the randomized Hadamard transform and the dense fallback.

A rotation is an orthogonal n x n matrix R with forward x -> R x and inverse y -> R^T y.

- :class:`RandomizedHadamard` ``(n, seed)``: R = H_n S, S = diag(s), s in {-1, +1}^n drawn
  from numpy's ``default_rng(seed)`` as s = 1 - 2 * integers(0, 2, n). Stored as (n, seed)
  plus the construction name and a SHA-256 of s, checked on reload.
- :class:`RandomOrthogonal` ``(n, seed)``: the explicit fallback for any n: R = Q from the
  QR factorization G = Q R of a Gaussian matrix G from ``default_rng(seed)``, with the
  columns' signs fixed so diag(R) > 0 (this makes Q Haar-distributed, and unique: a
  full-rank G has exactly one such Q). Stored as (n, seed) plus a SHA-256 of G.
- :func:`make_rotation` picks between them (the fallback only on request) and
  :func:`rotation_from_dict` rebuilds either from its ``to_dict()``.

What the checksums protect against: a numpy whose random stream for the seed differs
(another bit generator, sampling algorithm or version), which would silently rebuild a
different rotation than the one folded into stored weights. They hash what the seed
determines exactly: the signs, and the bytes of G (little-endian float64). They do not
hash Q: the QR's rounding differs between LAPACK/BLAS builds (by ~1e-15, harmless since
Q itself is unique), so a hash of Q, even rounded, could report a false mismatch.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from .. import _checks
from .constructions import MAX_DENSE_ORDER, MAX_ORDER, construction, hadamard, is_supported
from .transform import rotate, rotate_dense

_SHA256 = re.compile(r"[0-9a-f]{64}")


def random_signs(n: int, seed: int) -> np.ndarray:
    """The sign vector s in {-1, +1}^n of RandomizedHadamard(n, seed), float64.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    rng = np.random.default_rng(seed)
    return 1.0 - 2.0 * rng.integers(0, 2, size=n)


def _signs_digest(s: np.ndarray) -> str:
    return hashlib.sha256((s < 0).astype(np.uint8).tobytes()).hexdigest()


def _check_stored(d, kind: str, version: int, keys: tuple[str, ...]) -> None:
    """Check a stored rotation dict: its kind, the integer version this code reads, and
    every key in ``keys`` present with the right type. Raises a ValueError naming the
    problem (never a bare KeyError)."""
    if not isinstance(d, dict):
        raise ValueError(f"a stored rotation must be a dict, got {type(d).__name__}")
    if d.get("kind") != kind:
        raise ValueError(f"not a {kind!r} rotation dict: kind is {d.get('kind')!r}")
    stored = d.get("version")
    if type(stored) is not int or stored != version:          # not True, 1.0 or "1"
        raise ValueError(f"unsupported {kind!r} rotation dict version {stored!r} "
                         f"(this code reads version {version} only)")
    for key in keys:
        if key not in d:
            raise ValueError(f"stored {kind!r} rotation dict (version {version}) lacks the "
                             f"key {key!r}: {d!r}")
        value = d[key]
        if key in ("n", "seed"):
            try:
                _checks.integer(value, f"stored {key!r}", 1 if key == "n" else 0)
            except (TypeError, ValueError) as err:     # a malformed record: a bad value
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

    Chapter: Spherical coherence processing (book/coherence.ipynb).
    """

    kind = "randomized_hadamard"

    def __init__(self, n: int, seed: int):
        self.n = _checks.integer(n, "Hadamard order", 1)
        self.seed = _checks.integer(seed, "seed", 0)
        if self.n > MAX_ORDER:
            raise ValueError(f"RandomizedHadamard(n={self.n}): n is larger than MAX_ORDER = "
                             f"{MAX_ORDER}; no weight dimension is that large (its signs "
                             f"alone would take {8 * self.n / 2**30:.0f} GiB)")
        self.construction = construction(self.n)     # raises for unsupported n
        self.signs = random_signs(self.n, self.seed)

    def forward(self, x, axis: int = -1, backend: str | None = "auto"):
        return rotate(x, self.n, axis, backend, False, self.signs, None)

    def inverse(self, y, axis: int = -1, backend: str | None = "auto"):
        return rotate(y, self.n, axis, backend, True, None, self.signs)

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
        _check_stored(d, cls.kind, 1, ("n", "seed", "construction", "signs_sha256"))
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
    n = _checks.integer(n, "n", 1)
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
    """Haar-random orthogonal n x n matrix (float64) from default_rng(seed).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    n = _check_dense_order(n, "random_orthogonal")
    return _orthogonal_from_gaussian(_gaussian(n, _checks.integer(seed, "seed", 0)))


class RandomOrthogonal:
    """The explicit fallback for any n <= MAX_DENSE_ORDER: a dense seeded random
    orthogonal R (O(n^2) per vector).

    Every backend computes the same dense product with the library of the input: numpy's
    matmul (BLAS) for a numpy array, torch.matmul for a tensor, so a tensor keeps its
    device, dtype and gradients whatever the backend (there is no faster algorithm for a
    dense R to tier, so ``backend`` is only checked for validity). NaN/Inf input and an
    overflowing result raise ValueError, as for :class:`RandomizedHadamard`.

    Chapter: Spherical coherence processing (book/coherence.ipynb).
    """

    kind = "random_orthogonal"
    _CONSTRUCTION = "qr(gaussian)"

    def __init__(self, n: int, seed: int):
        self.n = _check_dense_order(n, "RandomOrthogonal")
        self.seed = _checks.integer(seed, "seed", 0)
        G = _gaussian(self.n, self.seed)
        self.gaussian_sha256 = _gaussian_digest(G)
        self._Q = _orthogonal_from_gaussian(G)
        self.construction = self._CONSTRUCTION

    def forward(self, x, axis: int = -1, backend: str | None = "auto"):
        return rotate_dense(x, self._Q, axis, backend)

    def inverse(self, y, axis: int = -1, backend: str | None = "auto"):
        return rotate_dense(y, self._Q.T, axis, backend)

    def matrix(self) -> np.ndarray:
        return self._Q.copy()

    def to_dict(self) -> dict:
        """Version 2: the checksum is of the Gaussian G, not of Q (see the module
        docstring). Version 1 (a hash of Q) was never published and is not read."""
        return {"kind": self.kind, "version": 2, "n": self.n, "seed": self.seed,
                "construction": self.construction, "gaussian_sha256": self.gaussian_sha256}

    @classmethod
    def from_dict(cls, d: dict) -> "RandomOrthogonal":
        _check_stored(d, cls.kind, 2, ("n", "seed", "construction", "gaussian_sha256"))
        if d["construction"] != cls._CONSTRUCTION:
            raise ValueError(f"stored construction {d['construction']!r} is not this "
                             f"version's {cls._CONSTRUCTION!r}")
        rot = cls(d["n"], d["seed"])
        if rot.gaussian_sha256 != d["gaussian_sha256"]:
            raise ValueError("the Gaussian matrix drawn from the stored seed does not match "
                             "the stored checksum (different numpy random stream?)")
        return rot

    def __repr__(self) -> str:
        return f"RandomOrthogonal(n={self.n}, seed={self.seed})"


def make_rotation(n: int, seed: int, fallback: str | None = None):
    """RandomizedHadamard(n, seed) if n is supported; otherwise the ValueError, unless the
    caller opts in with ``fallback="orthogonal"`` (then RandomOrthogonal(n, seed)).

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    if fallback is not None:
        _checks.choice(fallback, "fallback", ("orthogonal",))
    if is_supported(n) or fallback is None:
        return RandomizedHadamard(n, seed)
    return RandomOrthogonal(n, seed)


def rotation_from_dict(d: dict):
    """Rebuild a rotation from its ``to_dict()``; None stays None.

    Chapter: Spherical coherence processing (book/coherence.ipynb)."""
    if d is None:
        return None
    kinds = {RandomizedHadamard.kind: RandomizedHadamard, RandomOrthogonal.kind: RandomOrthogonal}
    if not isinstance(d, dict) or d.get("kind") not in kinds:
        raise ValueError(f"unknown rotation dict: {d!r}")
    return kinds[d["kind"]].from_dict(d)
