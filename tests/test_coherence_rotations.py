"""Tests of pvqref.coherence's seeded rotations: RandomizedHadamard, the dense fallback
RandomOrthogonal, choosing between them, and their stored dicts."""

import json

import numpy as np
import pytest
import torch

from pvqref import coherence as coh


# ---------------------------------------------------------------- choosing a rotation

def test_fallback_is_chosen_only_explicitly():
    R = coh.make_rotation(172, 3, fallback="orthogonal")
    assert isinstance(R, coh.RandomOrthogonal)
    assert isinstance(coh.make_rotation(576, 3, fallback="orthogonal"), coh.RandomizedHadamard)
    Q = R.matrix()
    assert np.abs(Q @ Q.T - np.eye(172)).max() < 1e-12
    with pytest.raises(ValueError, match="fallback"):
        coh.make_rotation(172, 3, fallback="identity")


# ---------------------------------------------------------------- storage

def test_signs_are_reproducible_and_depend_on_the_seed():
    a, b = coh.RandomizedHadamard(576, 7), coh.RandomizedHadamard(576, 7)
    np.testing.assert_array_equal(a.signs, b.signs)
    assert set(np.unique(a.signs)) == {-1.0, 1.0}
    assert (a.signs != coh.RandomizedHadamard(576, 8).signs).any()


@pytest.mark.parametrize("rot", [coh.RandomizedHadamard(1536, 5), coh.RandomOrthogonal(40, 5)])
def test_rotation_roundtrips_through_json(rot):
    d = json.loads(json.dumps(rot.to_dict()))
    again = coh.rotation_from_dict(d)
    assert type(again) is type(rot) and again.n == rot.n and again.seed == rot.seed
    np.testing.assert_array_equal(again.matrix(), rot.matrix())
    assert len(json.dumps(d)) < 400
    tampered = dict(d, seed=d["seed"] + 1)
    with pytest.raises(ValueError, match="checksum"):
        coh.rotation_from_dict(tampered)
    with pytest.raises(ValueError):
        coh.rotation_from_dict(dict(d, kind="mystery"))


def test_stored_construction_must_match():
    d = coh.RandomizedHadamard(576, 1).to_dict()
    with pytest.raises(ValueError, match="construction"):
        coh.RandomizedHadamard.from_dict(dict(d, construction="paley1(q=35)"))


def test_random_orthogonal_tiers_and_inverse():
    R = coh.RandomOrthogonal(30, 2)
    x = np.random.default_rng(0).standard_normal((3, 30))
    for backend in coh.BACKENDS:
        np.testing.assert_allclose(R.inverse(R.forward(x, backend=backend)), x, atol=1e-12)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(R.forward(xt).numpy(), R.forward(x), atol=1e-12)


# ---------------------------------------------------------------- the dense fallback

@pytest.mark.parametrize("bad, err", [(2.5, TypeError), (True, TypeError), ("5", TypeError),
                                      (None, TypeError), (0, ValueError), (-3, ValueError)])
def test_random_orthogonal_validates_n(bad, err):
    # Wrong type (float, bool, str, None): TypeError; a non-positive integer: ValueError.
    kind = "an integer" if err is TypeError else "a positive integer"
    for build in (lambda: coh.RandomOrthogonal(bad, 0),
                  lambda: coh.make_rotation(bad, 0, fallback="orthogonal")):
        with pytest.raises(err, match=f"^n must be {kind}"):
            build()


@pytest.mark.parametrize("backend", [None, *coh.BACKENDS])
def test_random_orthogonal_rejects_overflow_and_nan_like_the_hadamard(backend):
    R = coh.RandomOrthogonal(12, 0)
    for bad, match in ((np.full(12, 3e38, dtype=np.float32), "overflow"),
                       (torch.full((12,), 3e38), "overflow"),
                       (np.r_[np.ones(11), np.nan], "NaN or Inf"),
                       (torch.tensor([1.0] * 11 + [np.inf]), "NaN or Inf")):
        with pytest.raises(ValueError, match=match):
            R.forward(bad, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        R.forward(np.ones(12), backend="cuda")


def test_random_orthogonal_backend_does_not_change_the_computation():
    # As its docstring says: numpy's product for arrays, torch's for tensors (which keep
    # their gradients on every backend).
    R = coh.RandomOrthogonal(30, 2)
    x = np.random.default_rng(0).standard_normal((3, 30))
    ys = [R.forward(x, backend=b) for b in (None, *coh.BACKENDS)]
    assert all(isinstance(y, np.ndarray) and np.array_equal(y, ys[0]) for y in ys)
    for b in (None, *coh.BACKENDS):
        xt = torch.tensor(x, requires_grad=True)
        y = R.forward(xt, backend=b)
        y.sum().backward()
        np.testing.assert_allclose(xt.grad.numpy(), np.broadcast_to(R.matrix().sum(0), x.shape),
                                   atol=1e-12)


def test_random_orthogonal_checksum_is_of_the_seeded_gaussian_not_of_lapack_output(
        monkeypatch):
    import hashlib
    R = coh.RandomOrthogonal(40, 9)
    d = R.to_dict()
    G = np.random.default_rng(9).standard_normal((40, 40))
    assert d["version"] == 2 and d["construction"] == "qr(gaussian)"
    assert d["gaussian_sha256"] == hashlib.sha256(G.astype("<f8").tobytes()).hexdigest()
    # Another LAPACK gives the same Q up to rounding. Model that by moving the entry of Q
    # nearest to a 6-decimal rounding boundary just across it (here by < 1e-8; at
    # n = 11008, with 1.2e8 entries, some entry lies within ~1e-14 of a boundary, so real
    # rounding differences do this): the old hash of round(Q, 6) changes, the G hash not.
    Q = R.matrix()
    scaled = Q * 1e6
    i, j = np.unravel_index(np.argmin(np.abs(scaled - np.floor(scaled) - 0.5)), Q.shape)
    boundary = (np.floor(scaled[i, j]) + 0.5) / 1e6
    nudged = Q.copy()
    nudged[i, j] = np.nextafter(boundary, -np.inf if Q[i, j] > boundary else np.inf)
    assert 0 < abs(nudged[i, j] - Q[i, j]) < 1e-8

    def old_hash(A):
        return hashlib.sha256(np.round(A, 6).tobytes()).hexdigest()
    assert old_hash(nudged) != old_hash(Q)
    real_qr = np.linalg.qr

    def other_lapack_qr(A):                          # returns nudged after the sign fix
        Q_raw, R_raw = real_qr(A)
        return nudged * np.where(np.diag(R_raw) < 0, -1.0, 1.0)[None, :], R_raw
    monkeypatch.setattr(np.linalg, "qr", other_lapack_qr)
    again = coh.rotation_from_dict(json.loads(json.dumps(d)))   # no false mismatch
    assert again.matrix()[i, j] == nudged[i, j]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="checksum"):
        coh.rotation_from_dict(dict(d, gaussian_sha256="0" * 64))


def test_version_1_random_orthogonal_dicts_are_refused_clearly():
    # Version 1 (a hash of Q rounded to 6 decimals) was never published: it is not read.
    import hashlib
    R = coh.RandomOrthogonal(30, 4)
    legacy = {"kind": "random_orthogonal", "version": 1, "n": 30, "seed": 4,
              "construction": "qr(gaussian)",
              "matrix_sha256": hashlib.sha256(np.round(R.matrix(), 6).tobytes()).hexdigest()}
    with pytest.raises(ValueError, match="unsupported 'random_orthogonal' rotation dict "
                                         "version 1 .*version 2"):
        coh.rotation_from_dict(legacy)


# ---------------------------------------------------------------- stored dicts

STORED = {"randomized_hadamard": coh.RandomizedHadamard(576, 1).to_dict(),
          "random_orthogonal": coh.RandomOrthogonal(20, 1).to_dict()}


@pytest.mark.parametrize("kind, key", [("randomized_hadamard", k) for k in
                                       ("n", "seed", "construction", "signs_sha256")] +
                         [("random_orthogonal", k) for k in
                          ("n", "seed", "construction", "gaussian_sha256")])
def test_stored_dict_missing_a_key_names_it(kind, key):
    d = dict(STORED[kind])
    del d[key]
    with pytest.raises(ValueError, match=f"lacks the key '{key}'"):
        coh.rotation_from_dict(d)


@pytest.mark.parametrize("kind, change, match", [
    ("randomized_hadamard", {"version": True}, "version True"),
    ("randomized_hadamard", {"version": 1.0}, "version 1.0"),
    ("randomized_hadamard", {"version": "1"}, "version '1'"),
    ("randomized_hadamard", {"version": 2}, "version 2"),
    ("random_orthogonal", {"version": 3}, "version 3"),
    ("randomized_hadamard", {"n": "576"}, "stored 'n' must be"),
    ("randomized_hadamard", {"n": 576.0}, "stored 'n' must be"),
    ("random_orthogonal", {"n": 20.9}, "stored 'n' must be"),
    ("random_orthogonal", {"n": "20"}, "stored 'n' must be"),
    ("random_orthogonal", {"n": True}, "stored 'n' must be"),
    ("random_orthogonal", {"seed": -1}, "'seed' must be a non-negative integer"),
    ("randomized_hadamard", {"seed": None}, "stored 'seed' must be"),
    ("randomized_hadamard", {"construction": 5}, "'construction' must be a string"),
    ("random_orthogonal", {"construction": "paley1(q=19)"}, "construction 'paley1"),
    ("randomized_hadamard", {"signs_sha256": 0}, "'signs_sha256' must be 64"),
    ("random_orthogonal", {"gaussian_sha256": "xyz"}, "'gaussian_sha256' must be 64"),
])
def test_stored_dict_with_a_wrong_field_is_refused_clearly(kind, change, match):
    with pytest.raises(ValueError, match=match):
        coh.rotation_from_dict(dict(STORED[kind], **change))


def test_relabelled_or_non_dict_stored_rotations_are_refused_clearly():
    relabelled = dict(STORED["randomized_hadamard"], kind="random_orthogonal")
    with pytest.raises(ValueError, match="unsupported 'random_orthogonal' rotation dict "
                                         "version 1"):
        coh.rotation_from_dict(relabelled)
    with pytest.raises(ValueError, match="not a 'randomized_hadamard' rotation dict"):
        coh.RandomizedHadamard.from_dict(STORED["random_orthogonal"])
    with pytest.raises(ValueError, match="must be a dict"):
        coh.RandomOrthogonal.from_dict([("kind", "random_orthogonal")])
    assert coh.rotation_from_dict(None) is None
