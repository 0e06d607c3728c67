"""Logistic-regression head: standardised features, L-BFGS multinomial, C picked on validation.

The linear probe of the transfer-learning literature: a StandardScaler and an L2-regularised
multinomial logistic regression on frozen features, with the inverse regularisation strength C
chosen on a validation split and the final model refit on train + validation (the protocol of
Kornblith et al., "Do Better ImageNet Models Transfer Better?", https://arxiv.org/abs/1805.08974).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

# Twelve decades from very strong to almost no regularisation; on standardised features the
# best C for frozen-feature probes sits well inside this range.
DEFAULT_CS = np.logspace(-6, 5, 12)


def _validation_split(X, y, *, val_size, random_state, who: str):
    """Split off a seeded validation set, stratified whenever the class counts allow it.

    Stratification needs at least two samples per class and room for every class on both
    sides; tiny or very unbalanced sets fall back to a plain seeded shuffle split rather than
    failing, because the split only serves model selection.
    """
    n = len(y)
    if n < 2:
        raise ValueError(
            f"{who} needs at least 2 samples to split off a validation set; got {n} sample. "
            "Pass X_val and y_val to fit, or train on more samples."
        )
    _, counts = np.unique(y, return_counts=True)
    n_val = int(np.ceil(val_size * n)) if isinstance(val_size, float) else int(val_size)
    can_stratify = counts.min() >= 2 and len(counts) <= n_val <= n - len(counts)
    return train_test_split(
        X,
        y,
        test_size=val_size,
        random_state=random_state,
        stratify=y if can_stratify else None,
    )


def _check_val(estimator, X_val, y_val):
    """Validate an explicit validation set against the features seen in fit."""
    if (X_val is None) != (y_val is None):
        raise ValueError(
            "Pass both X_val and y_val, or neither; got only "
            f"{'X_val' if y_val is None else 'y_val'}."
        )
    X_val = validate_data(estimator, X_val, reset=False, dtype=[np.float64, np.float32])
    y_val = column_or_1d(y_val, warn=True)
    if len(y_val) != len(X_val) or len(y_val) == 0:
        raise ValueError(
            f"X_val and y_val must be non-empty and have the same number of rows; got "
            f"{len(X_val)} and {len(y_val)}."
        )
    return X_val, y_val


class LogRegHead(ClassifierMixin, BaseEstimator):
    """Standardise features, then an L2 multinomial logistic regression fitted with L-BFGS.

    If ``C`` is None, each value of ``Cs`` is fitted on the training part and scored (accuracy)
    on a validation part, warm-starting from the previous C; the best C is then refitted on
    train + validation. The sweep only ever sees what ``fit`` receives.

    Args:
        C: Inverse regularisation strength. None sweeps ``Cs`` on a validation split.
        Cs: Values of C to sweep; None means ``np.logspace(-6, 5, 12)``.
        val_size: Fraction (float) or number (int) of training rows held out for the sweep
            when ``fit`` gets no explicit ``X_val``/``y_val``.
        max_iter: L-BFGS iteration limit per fit.
        random_state: Seed of the stratified validation split.

    Attributes:
        classes_: Class labels, sorted.
        C_: The C of the final model.
        n_iter_: L-BFGS iterations of the final fit.
        val_scores_: Validation accuracy per swept C (empty when ``C`` is given).
        mean_, scale_: The StandardScaler's statistics on the final training data.
        coef_, intercept_: The final model's weights, on standardised features
            (one row for two classes, as in scikit-learn).
    """

    def __init__(self, C=None, Cs=None, val_size=0.2, max_iter=1000, random_state=0):
        self.C = C
        self.Cs = Cs
        self.val_size = val_size
        self.max_iter = max_iter
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # LogisticRegression has no NaN support and we feed it dense arrays only.
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    def _model(self, C: float) -> LogisticRegression:
        # lbfgs on more than two classes is the multinomial (softmax) loss in scikit-learn >= 1.5.
        return LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, warm_start=True)

    def fit(self, X, y, X_val=None, y_val=None) -> LogRegHead:
        """Fit the scaler and the logistic regression, sweeping C first if it is None.

        Args:
            X: Training features, shape (n_samples, n_features).
            y: Class labels, shape (n_samples,).
            X_val: Optional validation features for the C sweep; without them a seeded
                stratified ``val_size`` split of ``X`` is used.
            y_val: Labels of ``X_val``.

        With ``C`` set there is nothing to select, and ``X_val``/``y_val``, if given, simply
        join the training data.

        Returns:
            self.
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        explicit_val = X_val is not None or y_val is not None
        if explicit_val:
            X_val, y_val = _check_val(self, X_val, y_val)
            check_classification_targets(y_val)
        X_all = np.concatenate([X, X_val]) if explicit_val else X
        y_all = np.concatenate([y, y_val]) if explicit_val else y
        self.classes_ = np.unique(y_all)
        if len(self.classes_) < 2:
            raise ValueError(
                "LogRegHead needs samples of at least 2 classes; got one class, "
                f"{self.classes_.tolist()[0]!r}."
            )

        if self.C is not None:
            self.C_ = float(self.C)
            self.val_scores_ = {}
        else:
            if not explicit_val:
                X, X_val, y, y_val = _validation_split(
                    X, y, val_size=self.val_size, random_state=self.random_state, who="LogRegHead"
                )
            self.val_scores_ = self._sweep(X, y, X_val, y_val)
            best = max(self.val_scores_.values())
            # Ties go to the smallest C: the most regularised model that does as well.
            self.C_ = min(c for c, s in self.val_scores_.items() if s == best)

        scaler = StandardScaler().fit(X_all)
        model = self._model(self.C_).fit(scaler.transform(X_all), y_all)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self.coef_, self.intercept_ = model.coef_, model.intercept_
        self.n_iter_ = int(model.n_iter_.max())
        return self

    def _sweep(self, X, y, X_val, y_val) -> dict[float, float]:
        """Validation accuracy for each C, ascending, warm-starting along the path."""
        Cs = DEFAULT_CS if self.Cs is None else np.asarray(self.Cs, dtype=float).ravel()
        if Cs.size == 0 or not np.all(Cs > 0):
            raise ValueError(f"Cs must be a non-empty list of positive numbers; got {self.Cs!r}.")
        if len(np.unique(y)) < 2:
            raise ValueError(
                "The training part of the validation split holds a single class; pass X_val "
                "and y_val to fit, lower val_size, or set C."
            )
        scaler = StandardScaler().fit(X)
        Z, Z_val = scaler.transform(X), scaler.transform(X_val)
        # Going from strong to weak regularisation makes each solution a good start for the
        # next (a regularisation path), so the sweep costs little more than the last fit.
        model = self._model(float(Cs.min()))
        scores = {}
        with warnings.catch_warnings():
            # The weakly regularised end of the path often stops at max_iter; those points are
            # only scored, and the final refit still warns if it does not converge.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for C in np.sort(Cs):
                model.set_params(C=float(C)).fit(Z, y)
                scores[float(C)] = float(np.mean(model.predict(Z_val) == y_val))
        return scores

    def _decision(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Z = (X - self.mean_) / self.scale_
        return Z @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns ordered as ``classes_``."""
        scores = self._decision(X)
        if scores.shape[1] == 1:
            p = expit(scores[:, 0])
            return np.column_stack([1.0 - p, p])
        return softmax(scores, axis=1)

    def predict(self, X) -> np.ndarray:
        """Most probable class label for each row of ``X``."""
        proba = self.predict_proba(X)  # first, so an unfitted head raises NotFittedError
        return self.classes_[np.argmax(proba, axis=1)]

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
