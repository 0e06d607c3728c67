"""Tests for the heads: estimator contract, k-NN against brute force, the C sweep, save/load."""

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from colhead.heads import HEADS, KNNHead, LogRegHead, MLPHead, _io, load_head, make_head, save_head

# Small settings so every head fits in well under a second on 2 cores.
SMALL = {
    "logreg": {"Cs": [1e-2, 1.0, 1e2]},
    "mlp": {"hidden": 16, "max_epochs": 10, "lr": 1e-2, "batch_size": 64, "device": "cpu"},
    "knn": {"k": 5},
    "ncm": {},
    "ncm-semi": {},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module's tiny models on one thread each.

    With two OpenMP/BLAS threads on a 2-core machine that other processes also load, spinning
    threads make a 20-feature MLP step ~50x slower; one thread is faster for models this small.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def small_head(name):
    return HEADS[name](**SMALL[name])


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(
        n_samples=300, n_features=20, n_informative=8, n_classes=4, random_state=0
    )
    return X.astype(np.float32), y


# --- scikit-learn's estimator contract --------------------------------------------------------


@parametrize_with_checks([small_head(name) for name in sorted(HEADS)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_clone_gives_equal_unfitted_params(name, blobs):
    head = small_head(name).fit(*blobs)
    copy = clone(head)
    assert copy.get_params() == head.get_params()
    assert not hasattr(copy, "classes_")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_predict_proba_shape_and_rows_sum_to_one(name, digits):
    X_train, X_test, y_train, _ = digits
    proba = small_head(name).fit(X_train, y_train).predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_make_head_builds_and_suggests():
    assert make_head("knn", k=3).get_params()["k"] == 3
    with pytest.raises(
        ValueError, match=r"Unknown head 'logrg'; available: knn, logreg, mlp, ncm, ncm-semi\. "
    ):
        make_head("logrg")
    with pytest.raises(ValueError, match="Did you mean 'logreg'"):
        make_head("logrg")


# --- k-NN: the DINO protocol, checked against a plain implementation ----------------------------


def knn_reference(X_train, y_train, X_test, k, T):
    """Brute-force weighted k-NN, one query at a time, in float64."""
    classes = np.unique(y_train)
    A = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    proba = np.zeros((len(X_test), len(classes)))
    for i, x in enumerate(X_test.astype(np.float64)):
        sims = A @ (x / np.linalg.norm(x))
        for j in np.argsort(-sims)[: min(k, len(A))]:
            proba[i, np.searchsorted(classes, y_train[j])] += np.exp(sims[j] / T)
    return proba / proba.sum(axis=1, keepdims=True), classes


@pytest.mark.parametrize("k", [1, 7, 20, 1000])
def test_knn_matches_brute_force(k, blobs):
    X, y = blobs
    X_train, X_test, y_train = X[:200], X[200:], y[:200]
    head = KNNHead(k=k, temperature=0.07, batch_size=16).fit(X_train, y_train)
    expected, classes = knn_reference(X_train.astype(np.float64), y_train, X_test, k, 0.07)
    np.testing.assert_allclose(head.predict_proba(X_test), expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(head.predict(X_test), classes[np.argmax(expected, axis=1)])


def test_knn_probabilities_do_not_depend_on_batch_size(blobs):
    X, y = blobs
    small = KNNHead(k=10, batch_size=3).fit(X, y).predict_proba(X[:50])
    large = KNNHead(k=10, batch_size=4096).fit(X, y).predict_proba(X[:50])
    np.testing.assert_allclose(small, large, rtol=1e-12)


def test_knn_with_k_beyond_training_set_uses_every_vote():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], dtype=np.float32)
    head = KNNHead(k=50).fit(X, ["a", "b", "a"])
    proba = head.predict_proba(np.array([[1.0, 0.0]]))
    assert proba.shape == (1, 2) and 0 < proba[0, 1] < proba[0, 0]
    assert head.predict(np.array([[0.0, 2.0]]))[0] == "b"


def test_knn_rejects_bad_params(blobs):
    with pytest.raises(ValueError, match=r"The 'k' parameter of KNNHead must be .* Got 0 instead"):
        KNNHead(k=0).fit(*blobs)
    with pytest.raises(
        ValueError,
        match=r"'temperature' parameter of KNNHead must be a float in the range \(0.0, inf\)",
    ):
        KNNHead(temperature=0).fit(*blobs)


# --- logistic regression: the C sweep sees validation data only -------------------------------


def test_logreg_reaches_sensible_accuracy_on_digits(digits):
    X_train, X_test, y_train, y_test = digits
    head = LogRegHead().fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.9
    assert set(head.val_scores_) == {float(c) for c in np.logspace(-6, 5, 12)}
    assert head.C_ in head.val_scores_


def test_logreg_sweep_picks_c_on_validation_only(digits):
    X, X_test, y, y_test = digits
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.3, random_state=1)
    Cs = [1e-4, 1e-2, 1.0, 1e2]
    # Relabel the validation set with what the most regularised model predicts: on it, C=1e-4
    # scores a perfect 1.0, while the honest test set prefers a weaker regularisation. A sweep
    # that peeked at the test set (or ignored X_val) would pick another C.
    weak = LogRegHead(C=Cs[0]).fit(X_train, y_train)
    y_val_fake = weak.predict(X_val)
    assert not np.array_equal(y_val_fake, y_val)
    test_acc = {C: LogRegHead(C=C).fit(X_train, y_train).score(X_test, y_test) for C in Cs}
    assert max(test_acc, key=test_acc.get) != Cs[0]

    head = LogRegHead(Cs=Cs).fit(X_train, y_train, X_val=X_val, y_val=y_val_fake)
    assert list(head.val_scores_) == Cs
    assert head.val_scores_[Cs[0]] == 1.0
    assert head.C_ == Cs[0]
    # Each score counts correct rows out of the validation rows.
    assert all(np.isclose(s * len(X_val), round(s * len(X_val))) for s in head.val_scores_.values())


def test_logreg_sweep_never_sees_more_than_fit_gets(digits, monkeypatch):
    X, X_test, y, _ = digits
    seen = []
    original = LogRegHead._sweep

    def spy(self, X_tr, y_tr, X_va, y_va):
        seen.append((X_tr, X_va))
        return original(self, X_tr, y_tr, X_va, y_va)

    monkeypatch.setattr(LogRegHead, "_sweep", spy)
    LogRegHead(Cs=[0.1, 1.0], val_size=0.25).fit(X, y)
    ((X_tr, X_va),) = seen
    assert len(X_tr) + len(X_va) == len(X) and len(X_va) == int(np.ceil(0.25 * len(X)))
    rows = {r.tobytes() for r in X.astype(np.float32)}
    test_only = {r.tobytes() for r in X_test} - rows
    assert test_only and not test_only & {r.tobytes() for r in np.vstack([X_tr, X_va])}


def test_logreg_split_is_seeded(blobs):
    a = LogRegHead(Cs=[1e-3, 1e-1, 10.0], random_state=3).fit(*blobs)
    b = LogRegHead(Cs=[1e-3, 1e-1, 10.0], random_state=3).fit(*blobs)
    assert a.val_scores_ == b.val_scores_ and a.C_ == b.C_


def test_logreg_with_fixed_c_skips_the_sweep(blobs):
    head = LogRegHead(C=0.5).fit(*blobs)
    assert head.C_ == 0.5 and head.val_scores_ == {}


def test_logreg_needs_both_val_arrays(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="Pass both X_val and y_val"):
        LogRegHead().fit(X, y, X_val=X[:10])


# --- MLP ---------------------------------------------------------------------------------------


def test_mlp_is_deterministic_and_leaves_global_rng_alone(blobs):
    state = torch.random.get_rng_state()
    a = small_head("mlp").fit(*blobs).predict_proba(blobs[0])
    b = small_head("mlp").fit(*blobs).predict_proba(blobs[0])
    np.testing.assert_array_equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_mlp_early_stopping_keeps_best_epoch(digits):
    X_train, X_test, y_train, y_test = digits
    head = MLPHead(hidden=32, max_epochs=200, patience=3, lr=1e-2, device="cpu")
    head.fit(X_train[:800], y_train[:800], X_val=X_train[800:], y_val=y_train[800:])
    assert head.n_epochs_ < 200 and head.n_epochs_ - head.best_epoch_ == 3
    assert head.val_loss_curve_[head.best_epoch_ - 1] == min(head.val_loss_curve_)
    assert head.score(X_test, y_test) > 0.9


def test_mlp_accepts_string_labels(blobs):
    X, y = blobs
    labels = np.array(["cat", "dog", "eel", "fox"])[y]
    head = small_head("mlp").fit(X, labels)
    assert list(head.classes_) == ["cat", "dog", "eel", "fox"]
    assert set(head.predict(X)) <= set(head.classes_)


# --- save / load: one .npz, no pickle -----------------------------------------------------------


@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_save_load_round_trip_is_exact(name, labels, blobs, tmp_path):
    X, y = blobs
    if labels == "str":
        y = np.array(["α", "beta", "gamma", "δέλτα"])[y]
    head = small_head(name).fit(X, y)
    meta = {"fingerprint": "abc123", "column": "efficientnet_lite0", "nested": {"n": [1, 2]}}
    path = save_head(head, tmp_path / "head.bin", meta=meta)
    assert path == tmp_path / "head.bin" and path.is_file()  # no ".npz" appended

    loaded, loaded_meta = load_head(path)
    assert type(loaded) is type(head) and loaded_meta == meta
    assert loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.classes_, head.classes_)
    assert loaded.classes_.dtype == head.classes_.dtype
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))


def test_load_never_allows_pickle(blobs, tmp_path, monkeypatch):
    path = save_head(small_head("knn").fit(*blobs), tmp_path / "h.npz", meta={})
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_head(path)
    assert calls and all(c.get("allow_pickle") is False for c in calls)


def _write_npz(path, meta_bytes=None, **arrays):
    if meta_bytes is not None:
        arrays["__meta__"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


class _Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _saved_meta(tmp_path, blobs):
    path = save_head(small_head("logreg").fit(*blobs), tmp_path / "good.npz", meta={})
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(arrays.pop("__meta__").tobytes()), arrays


def test_load_refuses_a_pickle_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "head.npz"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match="not a colhead head file"):
        load_head(path)
    assert not marker.exists()


def test_load_refuses_a_pickled_array_inside_the_npz(tmp_path, blobs):
    marker = tmp_path / "pwned"
    header, arrays = _saved_meta(tmp_path, blobs)
    arrays["coef"] = np.array([_Exploit(marker)], dtype=object)
    path = _write_npz(tmp_path / "evil.npz", json.dumps(header).encode(), **arrays)
    with pytest.raises(ValueError, match="'coef' is corrupt or not a plain numeric array"):
        load_head(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: b"{not json", "not valid JSON"),
        (lambda h: b"[1, 2, 3]", "not a JSON object"),
        (lambda h: json.dumps({**h, "kind": "svm"}).encode(), "Unknown head kind 'svm'"),
        (lambda h: json.dumps({**h, "format": "other"}).encode(), "not a colhead.head file"),
        (lambda h: json.dumps({**h, "params": {"evil": 1}}).encode(), "unknown parameters"),
        (lambda h: json.dumps({**h, "classes_dtype": "V8"}).encode(), "unsupported dtype"),
        (lambda h: json.dumps({**h, "classes": [0, 1]}).encode(), "inconsistent logreg head"),
        (lambda h: json.dumps({**h, "classes_dtype": "<U1"}).encode(), "do not fit their dtype"),
        (lambda h: json.dumps(h).encode() + b" " * (2 << 20), "over the 1048576-byte limit"),
    ],
)
def test_load_refuses_tampered_metadata(mutate, message, tmp_path, blobs):
    header, arrays = _saved_meta(tmp_path, blobs)
    path = _write_npz(tmp_path / "bad.npz", mutate(header), **arrays)
    with pytest.raises(ValueError, match=message):
        load_head(path)


def test_load_refuses_missing_arrays_and_other_files(tmp_path, blobs):
    header, arrays = _saved_meta(tmp_path, blobs)
    del arrays["coef"]
    path = _write_npz(tmp_path / "partial.npz", json.dumps(header).encode(), **arrays)
    with pytest.raises(ValueError, match="inconsistent logreg head"):
        load_head(path)
    with pytest.raises(ValueError, match="no __meta__ entry"):
        load_head(_write_npz(tmp_path / "plain.npz", x=np.zeros(3)))
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        load_head(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a colhead head file"):
        load_head(tmp_path / "text.npz")
    with zipfile.ZipFile(tmp_path / "broken.npz", "w") as z:
        z.writestr("__meta__.npy", b"garbage")
    with pytest.raises(ValueError, match="'__meta__' is corrupt"):
        load_head(tmp_path / "broken.npz")
    with pytest.raises(FileNotFoundError, match="No head file"):
        load_head(tmp_path / "missing.npz")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_mlp_saved_for_cuda_loads_on_cpu_with_a_warning(blobs, tmp_path):
    head = small_head("mlp").fit(*blobs)
    path = save_head(head, tmp_path / "mlp.npz", meta={})
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("__meta__").tobytes())
    header["params"]["device"] = "cuda"
    _write_npz(path, json.dumps(header).encode(), **arrays)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded, _ = load_head(path)
    assert loaded.device_.type == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(blobs[0]), head.predict_proba(blobs[0]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mlp_trains_on_cuda_and_round_trips(digits, tmp_path):
    X_train, X_test, y_train, y_test = digits
    head = MLPHead(hidden=64, max_epochs=40, patience=5).fit(X_train, y_train)
    assert head.device_.type == "cuda" and next(head.module_.parameters()).is_cuda
    assert head.score(X_test, y_test) > 0.9
    again = MLPHead(hidden=64, max_epochs=40, patience=5).fit(X_train, y_train)
    np.testing.assert_allclose(again.predict_proba(X_test), head.predict_proba(X_test), atol=1e-6)
    loaded, _ = load_head(save_head(head, tmp_path / "mlp.npz", meta={}))
    assert loaded.device_.type == "cuda"
    np.testing.assert_array_equal(loaded.predict_proba(X_test), head.predict_proba(X_test))


def test_save_refuses_what_json_cannot_hold(tmp_path, blobs):
    head = small_head("knn").fit(*blobs)
    with pytest.raises(ValueError, match="stores parameters and meta as JSON"):
        save_head(head, tmp_path / "h.npz", meta={"when": object()})
    with pytest.raises(TypeError, match="meta must be a dict"):
        save_head(head, tmp_path / "h.npz", meta=["x"])
    with pytest.raises(ValueError, match="save_head can store"):
        save_head(StandardScaler(), tmp_path / "h.npz", meta={})
    assert _io.FORMAT_VERSION == 1 and not list(tmp_path.glob(".*tmp"))


# --- the registry: one table every caller reads (issue 10) -------------------------------------


def test_registry_is_the_one_table():
    from colhead.heads import DEFAULT_HEADS, HEAD_KINDS, head_kind, kind_of

    assert HEADS == {name: kind.cls for name, kind in HEAD_KINDS.items()}
    assert set(DEFAULT_HEADS) == {"logreg", "mlp", "knn", "ncm", "ncm-semi"}
    for name, kind in HEAD_KINDS.items():
        assert kind.name == name and head_kind(name) is kind and kind.summary
        assert kind_of(kind.cls()) == name
        assert kind.uses_unlabelled == (name == "ncm-semi")
    with pytest.raises(ValueError, match="Not a registered head: StandardScaler"):
        kind_of(StandardScaler())


@pytest.mark.parametrize("per_class", [1, 2, 5, 10, 40])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_protocol_heads_fit_at_every_shot_count(name, per_class, blobs):
    from colhead.heads import describe_head, make_protocol_head

    X, y = blobs
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])
    overrides = {"hidden": 16, "max_epochs": 5, "device": "cpu"} if name == "mlp" else {}
    head = make_protocol_head(name, per_class, seed=1, **overrides).fit(X[idx], y[idx])
    assert head.predict_proba(X).shape == (len(X), 4)
    settings = describe_head(head)
    assert settings["kind"] == name
    if name == "logreg":
        want = {1: "fixed", 2: "2-fold CV", 5: "5-fold CV", 10: "5-fold CV", 40: "holdout"}
        assert settings["selection_"] == want[per_class] and settings["normalize"] == "cl2n"
    if name == "mlp":
        assert (settings["fallback_"] == "logreg") == (per_class < 10)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_parameters_are_checked_as_scikit_learn_does(name):
    from sklearn.utils.estimator_checks import check_param_validation

    # Every constructor parameter has a constraint, and a bad type or value is an
    # InvalidParameterError naming it, raised by fit before any work.
    check_param_validation(type(small_head(name)).__name__, small_head(name))


# --- NCM: SimpleShot's CL2N nearest class mean -------------------------------------------------


def test_ncm_matches_a_plain_implementation(blobs):
    from colhead.heads import NCMHead

    X, y = blobs
    X_train, X_test, y_train = X[:200].astype(np.float64), X[200:], y[:200]
    mean = X_train.mean(axis=0)
    Z = X_train - mean
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    protos = np.stack([Z[y_train == c].mean(axis=0) for c in range(4)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    Q = X_test - mean
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    expected = np.argmax(Q @ protos.T, axis=1)
    head = NCMHead().fit(X_train, y_train)
    np.testing.assert_array_equal(head.predict(X_test), expected)
    np.testing.assert_allclose(head.prototypes_, protos, atol=1e-12)
    # The temperature sharpens the probabilities, never changes the class.
    sharp = NCMHead(temperature=0.01).fit(X_train, y_train)
    np.testing.assert_array_equal(sharp.predict(X_test), expected)
    assert sharp.predict_proba(X_test).max(axis=1).mean() > head.predict_proba(X_test).max(1).mean()


def test_ncm_power_transform_comes_before_centring_and_is_the_protocols(blobs, tmp_path):
    from colhead.heads import NCMHead, load_head, make_protocol_head, save_head

    X, y = blobs
    X = (X - X.min()).astype(np.float64)  # non-negative, like pooled activations
    X_train, X_test, y_train = X[:200], X[200:], y[:200]
    head = NCMHead(power=0.5).fit(X_train, y_train)
    plain = NCMHead().fit(np.sqrt(X_train), y_train)  # the same head on square-rooted vectors
    np.testing.assert_allclose(head.prototypes_, plain.prototypes_, atol=1e-12)
    np.testing.assert_allclose(head.mean_, np.sqrt(X_train).mean(axis=0))
    np.testing.assert_allclose(head.predict_proba(X_test), plain.predict_proba(np.sqrt(X_test)))
    assert not np.allclose(head.prototypes_, NCMHead().fit(X_train, y_train).prototypes_)
    # signed: a negative value keeps its sign (stage features can be negative)
    np.testing.assert_allclose(head._transform(np.array([[-4.0, 9.0]])), [[-2.0, 3.0]])
    protocol = make_protocol_head("ncm", 1)
    assert protocol.power == 0.5
    # a saved head predicts with its own power, whatever the class default
    save_head(head, tmp_path / "ncm.head", meta={})
    loaded, _ = load_head(tmp_path / "ncm.head")
    assert loaded.power == 0.5
    np.testing.assert_allclose(loaded.predict_proba(X_test), head.predict_proba(X_test))


def test_comparison_gives_unlabelled_heads_the_pool_less_its_labels_only(blobs):
    from colhead.heads import SemiNCMHead, head_methods, run_comparison

    X, y = blobs
    X_tr, y_tr, X_te, y_te = X[:200], y[:200], X[200:], y[200:]
    seen = []

    class Spy(SemiNCMHead):
        def fit(self, X, y, X_unlabelled=None):
            seen.append((X.copy(), X_unlabelled))
            return super().fit(X, y, X_unlabelled=X_unlabelled)

    (plain,) = head_methods(["ncm"])
    (semi,) = head_methods(["ncm-semi"])
    assert semi.unlabelled and not plain.unlabelled
    semi.make = lambda per_class: Spy()
    out = run_comparison([semi], {"features": (X_tr, X_te)}, y_tr, y_te, n_classes=4,
                         shots=[2, "all"], repeats=1, log=lambda m: None)  # fmt: skip
    (Xl, U), (Xall, Uall) = seen
    # 2 labelled per class; the unlabelled rows are the other training rows, none of the test
    # rows or the validation rows carved from training, and none of the labelled ones
    assert len(Xl) == 8 and len(Uall) == 0
    rows = {r.tobytes() for r in X_tr.astype(U.dtype)}
    assert len(U) + len(Xl) == len(Xall) < len(X_tr)  # the validation split is held out
    assert all(r.tobytes() in rows for r in U)
    assert not {r.tobytes() for r in U} & {r.tobytes() for r in Xl}
    assert not {r.tobytes() for r in U} & {r.tobytes() for r in X_te.astype(U.dtype)}
    assert {r["method"] for r in out["rows"]} == {"ncm-semi"}


def test_ncm_shrinkage_uses_scikit_learns_shrunken_centroids(blobs):
    from sklearn.neighbors import NearestCentroid

    from colhead.heads import NCMHead

    X, y = blobs
    head = NCMHead(shrink_threshold=0.5).fit(X, y)
    Z = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    ref = NearestCentroid(shrink_threshold=0.5).fit(Z, y).centroids_
    np.testing.assert_allclose(head.prototypes_, ref / np.linalg.norm(ref, axis=1)[:, None])
    assert not np.allclose(head.prototypes_, NCMHead().fit(X, y).prototypes_)
    with pytest.raises(ValueError, match="every class has a single training row"):
        NCMHead(shrink_threshold=0.5).fit(X[:4], [0, 1, 2, 3])


# --- the few-shot protocol: C by cross-validation, the MLP's fallback (issue 15) ---------------


def test_logreg_cv_chooses_c_on_folds_of_what_fit_gets(blobs, monkeypatch):
    X, y = blobs
    X, y = X[:60], y[:60]  # >= 10 of each class: 5 folds
    seen = []
    original = LogRegHead._sweep

    def spy(self, X_tr, y_tr, X_va, y_va):
        seen.append((len(X_tr), X_va.tobytes(), len(X_va)))
        return original(self, X_tr, y_tr, X_va, y_va)

    monkeypatch.setattr(LogRegHead, "_sweep", spy)
    head = LogRegHead(Cs=[1e-3, 1.0, 1e3], cv=5, normalize="cl2n").fit(X, y)
    assert head.selection_ == "5-fold CV" and len(seen) == 5
    # Every row is held out exactly once, and never trained on in its own fold.
    assert sum(n for _, _, n in seen) == len(X) and all(t + v == len(X) for t, _, v in seen)
    # Scores are correct counts over all held-out rows.
    assert all(np.isclose(s * len(X), round(s * len(X))) for s in head.val_scores_.values())
    # Capped by the smallest class: 2 per class is 2-fold (leave one out within each class).
    two = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(4)])
    assert LogRegHead(cv=5).fit(X[two], y[two]).selection_ == "2-fold CV"
    with pytest.raises(ValueError, match="needs at least 2 samples of every class"):
        LogRegHead(cv=5).fit(X[two[::2]], y[two[::2]])


def test_logreg_cl2n_normalises_rows(blobs):
    X, y = blobs
    head = LogRegHead(C=1.0, normalize="cl2n").fit(X, y)
    # CL2N is invariant to scaling a row: only its direction from the training mean counts.
    q = X[:5] - head.mean_
    np.testing.assert_allclose(
        head.predict_proba(head.mean_ + 3 * q), head.predict_proba(head.mean_ + q), atol=1e-12
    )
    np.testing.assert_array_equal(head.scale_, 1.0)


def test_mlp_falls_back_to_the_linear_probe_on_tiny_sets(blobs, tmp_path):
    X, y = blobs
    one = np.array([np.flatnonzero(y == c)[0] for c in range(4)])
    head = MLPHead(fallback_below=3, device="cpu").fit(X[one], y[one])
    assert isinstance(head.fallback_, LogRegHead) and not hasattr(head, "module_")
    ref = LogRegHead(C=1.0, normalize="cl2n").fit(X[one], y[one])
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X))
    assert head.describe()["fallback_"] == "logreg" and head.describe()["C_"] == 1.0
    loaded, _ = load_head(save_head(head, tmp_path / "mlp.npz", meta={}))
    assert isinstance(loaded.fallback_, LogRegHead)
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    # At or above the threshold the network trains, and a refit replaces the fallback.
    head.set_params(fallback_below=1, **SMALL["mlp"]).fit(X, y)
    assert head.fallback_ is None and hasattr(head, "module_")


# --- saving is atomic and durable (issue 13) ---------------------------------------------------


def test_save_head_fsyncs_the_file_and_folder_around_the_rename(blobs, tmp_path, monkeypatch):
    import os

    head = small_head("knn").fit(*blobs)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_head(head, tmp_path / "h.npz", meta={})
    # The file's bytes reach the disk before the rename, the folder entry after it.
    assert events == [("fsync", False), ("replace", "h.npz"), ("fsync", True)]


def test_a_failed_save_leaves_the_old_head_whole(blobs, tmp_path, monkeypatch):
    path = save_head(small_head("knn").fit(*blobs), tmp_path / "h.npz", meta={"v": 1})
    before = path.read_bytes()

    def torn_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # a crash mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", torn_savez)
    with pytest.raises(OSError, match="No space left"):
        save_head(small_head("ncm").fit(*blobs), path, meta={"v": 2})
    assert path.read_bytes() == before and load_head(path)[1] == {"v": 1}
    assert not list(tmp_path.glob(".*tmp"))  # the partial temp file is gone


def test_ncm_refines_prototypes_on_unlabelled_vectors_only_when_asked():
    from sklearn.datasets import make_blobs

    from colhead.heads import NCMHead

    # One labelled vector per cluster is a noisy prototype; the unlabelled vectors it softly
    # claims pull it to the cluster's centre (soft k-means).
    X_all, y_all = make_blobs(
        n_samples=400, centers=4, n_features=8, cluster_std=3.0, random_state=0
    )
    labelled = np.array([np.flatnonzero(y_all == c)[0] for c in range(4)])
    rest = np.setdiff1d(np.arange(400), labelled)
    X, y, U = X_all[labelled], y_all[labelled], X_all[rest]
    same = NCMHead(refine_steps=0).fit(X, y, X_unlabelled=U)  # same centring, no refinement
    refined = NCMHead(refine_steps=5).fit(X, y, X_unlabelled=U)
    plain = NCMHead().fit(X, y)
    assert np.allclose(NCMHead(refine_steps=5).fit(X, y).prototypes_, plain.prototypes_)
    acc = {k: h.score(U, y_all[rest]) for k, h in [("same", same), ("ref", refined)]}
    assert acc["ref"] > acc["same"] + 0.015 and same.describe()["refine_steps"] == 0
