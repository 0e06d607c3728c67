"""Logistic-regression head: normalised features, L-BFGS multinomial, C picked on held-out data.

The linear probe of the transfer-learning literature: normalised frozen features and an
L2-regularised multinomial logistic regression, with the inverse regularisation strength C
chosen on validation data and the final model refit on all of it (Kornblith et al., "Do Better
ImageNet Models Transfer Better?", https://arxiv.org/abs/1805.08974). With few labels a single
held-out split is noise (one image per class), so ``cv`` chooses C by stratified k-fold
cross-validation instead (issue 15), and ``normalize="cl2n"`` centres and L2-normalises the
vectors as SimpleShot does (Wang et al. 2019, https://arxiv.org/abs/1911.04623), which needs no
per-feature statistics that a handful of images cannot estimate.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import POSITIVE_INT, POSITIVE_REAL, VAL_SIZE, HeadBase
from ._validation import check_val, stratified_folds, validation_split

# Twelve decades from very strong to almost no regularisation; on standardised features the
# best C for frozen-feature probes sits well inside this range.
DEFAULT_CS = np.logspace(-6, 5, 12)


def _statistics(X: np.ndarray, normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """Centre and per-feature scale of the training rows (float64)."""
    if normalize == "cl2n":
        mean = X.mean(axis=0, dtype=np.float64)
        return mean, np.ones_like(mean)
    scaler = StandardScaler().fit(X)
    return scaler.mean_, scaler.scale_


def _normalise(X, mean, scale, normalize: str) -> np.ndarray:
    Z = (np.asarray(X, dtype=np.float64) - mean) / scale
    if normalize == "cl2n":
        Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return Z


class LogRegHead(HeadBase):
    """Normalise features, then an L2 multinomial logistic regression fitted with L-BFGS.

    If ``C`` is None, each value of ``Cs`` is fitted on training data and scored (accuracy) on
    held-out data, warm-starting from the previous C: on ``cv`` stratified folds when ``cv`` is
    set, else on one ``val_size`` split (or the ``X_val`` given to ``fit``). The best C is then
    refitted on everything ``fit`` received. The sweep only ever sees what ``fit`` receives.

    Args:
        C: Inverse regularisation strength. None selects it from ``Cs``.
        Cs: Values of C to sweep; None means ``np.logspace(-6, 5, 12)``.
        cv: Number of stratified folds to choose C on (capped by the smallest class; needs 2
            samples of every class); None uses one held-out split.
        val_size: Fraction (float) or number (int) of training rows held out for the sweep
            when ``cv`` is None and ``fit`` gets no explicit ``X_val``/``y_val``.
        normalize: "standard" (per-feature mean and standard deviation, as StandardScaler) or
            "cl2n" (subtract the training mean, then L2-normalise each row).
        max_iter: L-BFGS iteration limit per fit.
        random_state: Seed of the validation split or folds.

    Attributes:
        classes_: Class labels, sorted.
        C_: The C of the final model.
        selection_: How C_ was chosen: "fixed", "holdout", "given" (X_val) or "k-fold CV".
        n_iter_: L-BFGS iterations of the final fit.
        val_scores_: Held-out accuracy per swept C (empty when ``C`` is given).
        mean_, scale_: Normalisation statistics of the final training data.
        coef_, intercept_: The final model's weights, on normalised features
            (one row for two classes, as in scikit-learn).
    """

    _parameter_constraints = {
        "C": [POSITIVE_REAL, None],
        "Cs": ["array-like", None],
        "cv": [POSITIVE_INT, None],
        "val_size": VAL_SIZE,
        "normalize": [StrOptions({"standard", "cl2n"})],
        "max_iter": [POSITIVE_INT],
        "random_state": ["random_state"],
    }

    def __init__(
        self, C=None, Cs=None, cv=None, val_size=0.2, normalize="standard", max_iter=1000,
        random_state=0,
    ):  # fmt: skip
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.val_size = val_size
        self.normalize = normalize
        self.max_iter = max_iter
        self.random_state = random_state

    def _model(self, C: float) -> LogisticRegression:
        # lbfgs on more than two classes is the multinomial (softmax) loss in scikit-learn >= 1.5.
        return LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, warm_start=True)

    def fit(self, X, y, X_val=None, y_val=None) -> LogRegHead:
        """Fit the normalisation and the logistic regression, selecting C first if it is None.

        Args:
            X: Training features, shape (n_samples, n_features).
            y: Class labels, shape (n_samples,).
            X_val: Optional validation features for the C sweep; without them ``cv`` folds or
                a seeded stratified ``val_size`` split of ``X`` are used.
            y_val: Labels of ``X_val``.

        With ``C`` set there is nothing to select, and ``X_val``/``y_val``, if given, simply
        join the training data.

        Returns:
            self.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        explicit_val = X_val is not None or y_val is not None
        if explicit_val:
            X_val, y_val = check_val(self, X_val, y_val)
        X_all = np.concatenate([X, X_val]) if explicit_val else X
        y_all = np.concatenate([y, y_val]) if explicit_val else y
        self.classes_ = np.unique(y_all)
        if len(self.classes_) < 2:
            raise ValueError(
                "LogRegHead needs samples of at least 2 classes; got one class, "
                f"{self.classes_.tolist()[0]!r}."
            )

        if self.C is not None:
            self.C_, self.selection_, self.val_scores_ = float(self.C), "fixed", {}
        else:
            if explicit_val:
                self.selection_, parts = "given", [(X, y, X_val, y_val)]
            elif self.cv is not None:
                folds = stratified_folds(y, self.cv, self.random_state)
                self.selection_ = f"{len(folds)}-fold CV"
                parts = [(X[tr], y[tr], X[va], y[va]) for tr, va in folds]
            else:
                X_tr, X_va, y_tr, y_va = validation_split(
                    X, y, val_size=self.val_size, random_state=self.random_state, who="LogRegHead"
                )
                self.selection_, parts = "holdout", [(X_tr, y_tr, X_va, y_va)]
            # Accuracy over all held-out rows of all folds: each C is judged on the same rows.
            correct = np.sum([self._sweep(*part) for part in parts], axis=0)
            n_held_out = sum(len(part[3]) for part in parts)
            self.val_scores_ = {
                float(c): float(n) / n_held_out for c, n in zip(self._Cs(), correct)
            }
            best = max(self.val_scores_.values())
            # Ties go to the smallest C: the most regularised model that does as well.
            self.C_ = min(c for c, s in self.val_scores_.items() if s == best)

        self.mean_, self.scale_ = _statistics(X_all, self.normalize)
        model = self._model(self.C_).fit(self._normalised(X_all), y_all)
        self.coef_, self.intercept_ = model.coef_, model.intercept_
        self.n_iter_ = int(model.n_iter_.max())
        return self

    def _normalised(self, X) -> np.ndarray:
        return _normalise(X, self.mean_, self.scale_, self.normalize)

    def _Cs(self) -> np.ndarray:
        Cs = DEFAULT_CS if self.Cs is None else np.asarray(self.Cs, dtype=float).ravel()
        if Cs.size == 0 or not np.all(Cs > 0):
            raise ValueError(f"Cs must be a non-empty list of positive numbers; got {self.Cs!r}.")
        return np.sort(Cs)

    def _sweep(self, X, y, X_val, y_val) -> np.ndarray:
        """Correct held-out predictions for each C of ``_Cs()`` (ascending), warm-starting."""
        Cs = self._Cs()
        if len(np.unique(y)) < 2:
            raise ValueError(
                "The training part of the validation split holds a single class; pass X_val "
                "and y_val to fit, lower val_size, set cv, or set C."
            )
        mean, scale = _statistics(X, self.normalize)
        Z, Z_val = (_normalise(A, mean, scale, self.normalize) for A in (X, X_val))
        # Going from strong to weak regularisation makes each solution a good start for the
        # next (a regularisation path), so the sweep costs little more than the last fit.
        model = self._model(float(Cs[0]))
        correct = []
        with warnings.catch_warnings():
            # The weakly regularised end of the path often stops at max_iter; those points are
            # only scored, and the final refit still warns if it does not converge.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for C in Cs:
                model.set_params(C=float(C)).fit(Z, y)
                correct.append(int(np.sum(model.predict(Z_val) == y_val)))
        return np.asarray(correct)

    def _decision(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._normalised(X) @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns ordered as ``classes_``."""
        scores = self._decision(X)
        if scores.shape[1] == 1:
            p = expit(scores[:, 0])
            return np.column_stack([1.0 - p, p])
        return softmax(scores, axis=1)

    def _fitted_settings(self) -> dict:
        return {"C_": self.C_, "selection_": self.selection_}

    # Serialisation hooks for heads._io: learned arrays only, never pickled objects.
    def _export_state(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
            "C": np.asarray(self.C_, dtype=float),
            "n_iter": np.asarray(self.n_iter_, dtype=np.int64),
            "val_Cs": np.asarray(list(self.val_scores_), dtype=float),
            "val_scores": np.asarray(list(self.val_scores_.values()), dtype=float),
        }

    def _import_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean_, self.scale_ = state["mean"], state["scale"]
        self.coef_, self.intercept_ = state["coef"], state["intercept"]
        self.C_ = float(state["C"])
        self.n_iter_ = int(state["n_iter"])
        self.val_scores_ = dict(zip(state["val_Cs"].tolist(), state["val_scores"].tolist()))
        # Files written before selection_ existed: what the stored sweep says happened.
        self.selection_ = "fixed" if self.C is not None else ("cv" if self.cv else "holdout")
