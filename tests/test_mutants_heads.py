"""Checks that kill mutants of heads/ which the other tests let live (issue 16, bench/mutants.py).

Each test names the mutation(s) it kills, as ``module:line: mutation`` of the code it was written
against; all are small and use real numbers worked out by hand or by scipy/scikit-learn.
"""

import math

import numpy as np
import pytest
from scipy import stats

from colhead.heads._stats import balanced_interval, format_ci, run_intervals, t_interval, wilson


# -- heads/_stats.py -----------------------------------------------------------------------------
@pytest.mark.parametrize("k, n", [(1, 7), (3, 10), (8, 10), (47, 50), (0, 3), (3, 3)])
def test_wilson_matches_scipys_wilson_interval(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_wilson_of_no_trials_is_the_whole_unit_interval():
    # _stats:29: `return (0.0, 1.0)` -> (0.0, 2.0)
    assert wilson(0, 0) == (0.0, 1.0)


def test_balanced_interval_by_hand():
    # Wilson-centred variances: class a 5/10 -> p = 7/14, class b 1/1 -> p = 3/5; a class with
    # no test rows is left out. Kills _stats:40 (`supports > 0` -> `> 1`, drops class b),
    # _stats:46 (+2 / n+4 / p*(1-p) changed) and _stats:47 (`/ len(r)` -> `* len(r)`).
    recalls, supports = np.array([0.5, 1.0, 0.0]), np.array([10, 1, 0])
    p = np.array([7 / 14, 3 / 5])
    se = math.sqrt(p[0] * (1 - p[0]) / 10 + p[1] * (1 - p[1]) / 1) / 2
    lo, hi = balanced_interval(recalls, supports)
    assert (lo, hi) == pytest.approx((max(0.0, 0.75 - 1.959964 * se), 1.0), abs=1e-6)
    # an unclipped one: two classes of 40 at recall 0.5
    lo, hi = balanced_interval(np.array([0.5, 0.5]), np.array([40, 40]))
    se = math.sqrt(2 * (22 / 44) * (22 / 44) / 40) / 2
    assert (lo, hi) == pytest.approx((0.5 - 1.959964 * se, 0.5 + 1.959964 * se), abs=1e-6)


def test_balanced_interval_without_any_supported_class_is_unknown():
    # _stats:43: `return (0.0, 1.0)` -> (1.0, 1.0)
    assert balanced_interval(np.array([0.0, 0.0]), np.array([0, 0])) == (0.0, 1.0)


def test_t_interval_is_clipped_to_the_unit_interval_and_one_value_gives_itself():
    # _stats:57: `min(1.0, ...)` -> `min(2.0, ...)`; the lower end stays the textbook one
    v = [0.9, 1.0, 1.0]
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert t_interval(v) == pytest.approx((np.mean(v) - half, 1.0))
    assert t_interval([0.4]) == (0.4, 0.4)


def test_run_intervals_counts_hits_per_class():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, 1, 0])
    got = run_intervals(y, pred, n_classes=4)  # class 3 has no test rows
    assert got["top1_ci"] == pytest.approx(list(wilson(4, 7)))
    want = balanced_interval(np.array([0.5, 1.0, 0.0, 0.0]), np.array([4, 2, 1, 0]))
    assert got["balanced_accuracy_ci"] == pytest.approx(list(want))


def test_format_ci_prints_percentages():
    # _stats:76: `return f"..."` -> `return None`
    assert format_ci(0.84, (0.8012, 0.8734)) == "84.0 [80.1, 87.3]"
    assert format_ci(0.5, None) == "50.0"


# -- heads/_knn.py -------------------------------------------------------------------------------
def test_knn_votes_stay_finite_at_a_tiny_temperature():
    # _knn:97: `sims - sims.amax(...)` -> `sims + sims.amax(...)`: the shift cancels in the
    # normalisation, so only a temperature small enough to overflow exp tells them apart.
    from colhead.heads import KNNHead

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8))
    y = np.repeat(np.arange(3), 10)
    Q = rng.normal(size=(5, 8))
    T = 1e-3
    proba = KNNHead(k=4, temperature=T).fit(X, y).predict_proba(Q)
    # reference: the same votes with a log-sum-exp in float64
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sims = unit(Q) @ unit(X).T
    want = np.zeros((5, 3))
    for i, s in enumerate(sims):
        top = np.argsort(-s)[:4]
        w = np.exp((s[top] - s[top].max()) / T)
        np.add.at(want[i], y[top], w)
    want /= want.sum(axis=1, keepdims=True)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba, want, atol=1e-9)


# -- heads/_ncm.py -------------------------------------------------------------------------------
def test_ncm_shrinkage_works_with_two_rows_per_class():
    # _ncm:73: `counts.max() < 2` -> `< 3` refused the smallest spread shrinkage can use
    from sklearn.neighbors import NearestCentroid

    from colhead.heads import NCMHead

    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 5)) + np.repeat(np.eye(3, 5) * 3, 2, axis=0)
    y = np.repeat(np.arange(3), 2)
    head = NCMHead(shrink_threshold=0.2).fit(X, y)
    Z = X - X.mean(axis=0)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    ref = NearestCentroid(shrink_threshold=0.2).fit(Z, y).centroids_
    np.testing.assert_allclose(head.prototypes_, ref / np.linalg.norm(ref, axis=1, keepdims=True))
    with pytest.raises(ValueError, match="single training row"):
        NCMHead(shrink_threshold=0.2).fit(X[::2], y[::2])


# -- heads/_logreg.py ----------------------------------------------------------------------------
def test_logreg_standard_matches_a_scaler_and_logistic_regression_pipeline():
    # _logreg:44: `(X - mean) / scale` -> `* scale` (cl2n has scale 1, so only "standard" shows it)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from colhead.heads import LogRegHead

    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 4)) * [1.0, 5.0, 0.2, 30.0] + [0, 3, -1, 100]
    y = (X[:, 1] / 5 + X[:, 3] / 30 + rng.normal(0, 0.5, 60) > 3.5).astype(int) + (X[:, 0] > 1)
    head = LogRegHead(C=0.5, normalize="standard").fit(X, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000)).fit(X, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("Cs", [[], [-1.0, 1.0], [0.0]])
def test_logreg_refuses_bad_cs_with_its_own_message(Cs):
    # _logreg:173: `Cs.size == 0 or not np.all(Cs > 0)` -> `and` let [-1, 1] reach scikit-learn
    from colhead.heads import LogRegHead

    X = np.random.default_rng(3).normal(size=(20, 3))
    y = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="Cs must be a non-empty list of positive numbers"):
        LogRegHead(Cs=Cs).fit(X, y)


def test_logreg_sweep_on_a_single_class_training_part_says_how_to_fix_it():
    # _logreg:181: the raise removed left scikit-learn's bare "needs samples of at least 2
    # classes" without the hint (pass X_val, lower val_size, set cv or C)
    from colhead.heads import LogRegHead

    rng = np.random.default_rng(4)
    X, X_val = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="holds a single class; pass X_val"):
        LogRegHead().fit(X, np.zeros(8, int), X_val=X_val, y_val=np.array([0, 1, 0, 1]))


@pytest.mark.parametrize("params, selection", [({"C": 1.0}, "fixed"), ({}, "holdout")])
def test_a_loaded_logreg_says_how_its_c_was_chosen(params, selection, tmp_path):
    # _logreg:236: `self.C is not None` -> `is None` swapped "fixed" and the sweep on load
    from colhead.heads import LogRegHead, describe_head, load_head, save_head

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    head = LogRegHead(**params).fit(X, y)
    loaded, _ = load_head(save_head(head, tmp_path / "h.npz", meta={}))
    assert head.selection_ == loaded.selection_ == selection
    assert describe_head(loaded)["selection_"] == selection


# -- heads/_validation.py ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_continuous_validation_labels_are_refused(name):
    # _validation:72: `check_classification_targets(y_val)` removed: the MLP then trained with
    # regression targets as its validation labels (logreg's final fit refuses them anyway)
    from colhead.heads import make_head

    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(20, 3)), np.repeat([0, 1], 10)
    head = make_head(name, **({"max_epochs": 2} if name == "mlp" else {}))
    with pytest.raises(ValueError, match="Unknown label type"):
        head.fit(X, y, X_val=X[:4], y_val=np.array([0.5, 1.25, 0.1, 2.7]))


def test_validation_rows_must_match_their_labels():
    # _validation:67-68: `or` -> `and`, or the raise removed, let 4 rows with 3 labels through
    from colhead.heads import LogRegHead

    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(20, 3)), np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="must be non-empty and have the same number of rows"):
        LogRegHead().fit(X, y, X_val=X[:4], y_val=np.array([0, 1, 0]))


def test_validation_split_stratifies_whenever_the_counts_allow_it():
    # _validation:30 (`counts.min() >= 2`, `len(counts) <= n_val <= n - len(counts)` mutated):
    # a 2-row validation set of a 2 + 2 set holds one row of each class, for every seed ...
    from colhead.heads._validation import validation_split

    X, y = np.arange(4.0)[:, None], np.array([0, 0, 1, 1])
    for seed in range(10):
        *_, y_val = validation_split(X, y, val_size=0.5, random_state=seed, who="t")
        assert sorted(y_val) == [0, 1]
    # ... and falls back to a plain split where stratifying cannot work (3 of 4 rows held out)
    X_tr, X_val, *_ = validation_split(X, y, val_size=3, random_state=0, who="t")
    assert (len(X_tr), len(X_val)) == (1, 3)


def test_validation_split_needs_two_rows_and_works_with_two():
    # _validation:23: `n < 2` -> `n < 3` refused the smallest splittable set
    from colhead.heads._validation import validation_split

    X_tr, X_val, y_tr, y_val = validation_split(
        np.zeros((2, 1)), np.array([0, 1]), val_size=0.5, random_state=0, who="t"
    )
    assert len(X_tr) == len(X_val) == 1
    with pytest.raises(ValueError, match="t needs at least 2 samples"):
        validation_split(np.zeros((1, 1)), np.array([0]), val_size=0.5, random_state=0, who="t")


# -- heads/_registry.py --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "per_class, want",
    [(1, {"C": 1.0}), (2, {"cv": 5}), (29, {"cv": 5}), (30, {"val_size": 0.2, "cv": None})],
)
def test_logreg_protocol_switches_at_the_documented_label_counts(per_class, want):
    # _registry:26: LOGREG_HOLDOUT_FROM 30 -> 31 (the report's summary says "from 30")
    from colhead.heads import make_protocol_head

    params = make_protocol_head("logreg", per_class, seed=3).get_params()
    assert {k: params[k] for k in want} == want
    assert params["normalize"] == "cl2n" and params["random_state"] == 3


def test_the_registry_table_says_which_heads_run_by_default_and_take_validation_data():
    # _registry:48 (`uses_val` False -> True), :78 (mlp's uses_val True -> False): compare
    # passes X_val only to heads whose fit accepts it; :29 (`frozen=True` -> False): the one
    # table cannot be changed behind its callers' backs
    import dataclasses
    import inspect

    from colhead.heads import DEFAULT_HEADS, HEAD_KINDS

    assert DEFAULT_HEADS == ("logreg", "mlp", "knn", "ncm", "ncm-semi")
    for name, kind in HEAD_KINDS.items():
        takes_val = "X_val" in inspect.signature(kind.cls.fit).parameters
        assert kind.uses_val == takes_val == (name in ("logreg", "mlp")), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        HEAD_KINDS["knn"].uses_val = True


def test_validation_features_of_another_width_are_refused_by_name():
    # _validation:65: `reset=False` -> True took X_val's width as the head's own
    from colhead.heads import LogRegHead

    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(20, 3)), np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="X has 4 features, but LogRegHead is expecting 3"):
        LogRegHead(C=1.0).fit(X, y, X_val=rng.normal(size=(4, 4)), y_val=np.array([0, 1, 0, 1]))
