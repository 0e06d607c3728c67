"""The base the feature heads share: scikit-learn's tags and parameter checks, written once.

Every head reads dense float vectors from a cache (no NaN, no sparse input) and declares its
constructor parameters in ``_parameter_constraints``, scikit-learn's own format
(``sklearn.utils._param_validation``), checked by ``BaseEstimator._validate_params`` at the start
of ``fit``: a bad value is an ``InvalidParameterError`` (a ``ValueError`` and ``TypeError``) that
names the parameter, the allowed values and the value received, exactly as scikit-learn's own
estimators say it.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, RealNotInt

# The constraints several heads share. scikit-learn's constraint objects are public API of its
# estimators (``_parameter_constraints`` is documented for third-party estimators since 1.2).
POSITIVE_INT = Interval(Integral, 1, None, closed="left")
POSITIVE_REAL = Interval(Real, 0, None, closed="neither")
# A validation size: a fraction of the rows, or a number of rows.
VAL_SIZE = [Interval(RealNotInt, 0, 1, closed="neither"), POSITIVE_INT]


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine geometry), in the dtype of ``X``."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    # An all-zero vector has no direction; leave it zero (similarity 0 to everything).
    return X / np.maximum(norms, np.finfo(X.dtype).tiny)


class HeadBase(ClassifierMixin, BaseEstimator):
    """A classifier on cached feature vectors: dense, finite input; parameters checked in fit.

    Subclasses set ``_parameter_constraints`` and call ``self._validate_params()`` first thing
    in ``fit`` (and wherever a parameter set after fitting is used again, e.g. k-NN's ``k``).
    ``describe()`` gives the effective settings of a fitted head for reports.
    """

    _parameter_constraints: dict = {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Heads take dense float matrices only; NaN would spread into every weight or distance.
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    def predict(self, X) -> np.ndarray:
        """Most probable class label for each row of ``X``."""
        proba = self.predict_proba(X)  # first, so an unfitted head raises NotFittedError
        return self.classes_[np.argmax(proba, axis=1)]

    def describe(self) -> dict:
        """The settings that decided this head's predictions, as plain JSON values.

        The constructor parameters, plus what ``fit`` chose (subclasses add to it), so a report
        records what actually ran, not only what was asked for.
        """
        params = self.get_params(deep=False)
        out = {
            k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))
        }
        out.update(self._fitted_settings() if hasattr(self, "classes_") else {})
        return out

    def _fitted_settings(self) -> dict:
        return {}
