"""Nearest-class-mean head: SimpleShot's CL2N prototypes, compared by cosine.

Wang et al., "SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning"
(https://arxiv.org/abs/1911.04623): centre the vectors on the training mean, L2-normalise them,
average each class into one prototype, and assign a query to the closest prototype. It has
nothing to tune, so it is sound with one label per class, where a probe's C cannot be chosen
(measured on Fashion-MNIST in issue 15: 60.4% at one label, logreg with C=1 33.7%).

An optional power transform first (``power``; Hu et al., "Leveraging the Feature Distribution in
Transfer-based Few-Shot Learning", https://arxiv.org/abs/2006.03806) makes the pooled
activations' skewed, non-negative distributions closer to Gaussian, which class means suit
better. Measured in ``bench/fewshot.py`` on Fashion-MNIST (20 seeds): +0.8 to +1.2 points at 1,
5 and 10 labels per class on Lite0's vectors, cropped or full; the comparison protocol turns it
on.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.special import softmax
from sklearn.neighbors import NearestCentroid
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import POSITIVE_REAL, HeadBase, l2_normalise


class NCMHead(HeadBase):
    """Cosine nearest class mean on centred, L2-normalised vectors (CL2N).

    Args:
        shrink_threshold: None for plain class means; a number shrinks each prototype's
            per-feature deviation from the overall centroid towards it by that many within-class
            standard deviations (Tibshirani's nearest shrunken centroids, computed by
            scikit-learn's ``NearestCentroid``), which drops features that do not separate the
            classes. Needs some class with 2 or more rows.
        temperature: T of the softmax over cosine similarities in ``predict_proba`` (and of the
            soft assignments when refining); it changes the probabilities' sharpness, never the
            predicted class.
        power: None, or an exponent b: every value x becomes sign(x) |x|^b before centring
            (b = 0.5 is the square root of non-negative activations).
        refine_steps: With ``X_unlabelled`` given to ``fit``, this many soft k-means steps move
            each prototype towards the unlabelled vectors it softly claims (Ren et al. 2018,
            https://arxiv.org/abs/1803.00676): semi-supervised, for when the images are there
            but few have labels. 0, or no ``X_unlabelled``, is plain NCM.

    Attributes:
        classes_: Class labels, sorted.
        mean_: The training mean subtracted before normalising, float64.
        prototypes_: One unit-length prototype per class, shape (n_classes, n_features).
        class_counts_: Training rows per class.
    """

    _parameter_constraints = {
        "shrink_threshold": [Interval(Real, 0, None, closed="neither"), None],
        "temperature": [POSITIVE_REAL],
        "refine_steps": [Interval(Integral, 0, None, closed="left")],
        "power": [Interval(Real, 0, 1, closed="right"), None],
    }

    def __init__(self, shrink_threshold=None, temperature=0.05, refine_steps=0, power=None):
        self.shrink_threshold = shrink_threshold
        self.temperature = temperature
        self.refine_steps = refine_steps
        self.power = power

    def _transform(self, X: np.ndarray) -> np.ndarray:
        """float64 vectors, power-transformed when ``power`` is set (before any centring)."""
        X = X.astype(np.float64)
        if self.power is None or self.power == 1:
            return X
        return np.sign(X) * np.abs(X) ** self.power

    def fit(self, X, y, X_unlabelled=None) -> NCMHead:
        """Centre, normalise, and average each class into a unit-length prototype.

        Args:
            X: Training features, shape (n_samples, n_features).
            y: Class labels, shape (n_samples,).
            X_unlabelled: Optional vectors of training images without labels (never test
                images): they join the centring mean, and with ``refine_steps`` > 0 refine the
                prototypes.

        Returns:
            self.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
        U = None
        if X_unlabelled is not None and len(X_unlabelled):  # all labelled: nothing to add
            U = validate_data(self, X_unlabelled, reset=False, dtype=[np.float64, np.float32])
            U = self._transform(U)
        X = self._transform(X)
        self.mean_ = (X if U is None else np.concatenate([X, U])).mean(axis=0)
        Z = l2_normalise(X - self.mean_)
        if self.shrink_threshold is None or len(classes) < 2:
            means = np.zeros((len(classes), X.shape[1]))
            np.add.at(means, codes, Z)
            means /= counts[:, None]
        else:
            if counts.max() < 2:
                raise ValueError(
                    "shrink_threshold needs a within-class spread, but every class has a single "
                    "training row; set shrink_threshold=None for one label per class."
                )
            means = NearestCentroid(shrink_threshold=self.shrink_threshold).fit(Z, codes)
            means = means.centroids_
        self.classes_, self.class_counts_ = classes, counts
        self.prototypes_ = l2_normalise(means)
        if U is not None and self.refine_steps and len(classes) > 1:
            self._refine(Z, codes, l2_normalise(U - self.mean_))
        return self

    def _refine(self, Z: np.ndarray, codes: np.ndarray, U: np.ndarray) -> None:
        """Soft k-means: labelled rows count fully for their class, unlabelled ones softly."""
        sums = np.zeros_like(self.prototypes_)
        np.add.at(sums, codes, Z)
        for _ in range(self.refine_steps):
            w = softmax(U @ self.prototypes_.T / self.temperature, axis=1)  # (n_unlabelled, k)
            means = (sums + w.T @ U) / (self.class_counts_ + w.sum(axis=0))[:, None]
            self.prototypes_ = l2_normalise(means)

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of cosine similarity / T, shape (n_samples, n_classes), as ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        sims = l2_normalise(self._transform(X) - self.mean_) @ self.prototypes_.T
        return softmax(sims / self.temperature, axis=1)

    def _fitted_settings(self) -> dict:
        return {
            "min_class_count_": int(self.class_counts_.min()),
            "refine_steps": self.refine_steps,
            "power": self.power,
        }

    # Serialisation hooks for heads._io: learned arrays only, never pickled objects.
    def _export_state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "prototypes": self.prototypes_, "counts": self.class_counts_}

    def _import_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean_ = state["mean"].astype(np.float64)
        self.prototypes_ = state["prototypes"].astype(np.float64)
        self.class_counts_ = state["counts"].astype(np.int64)
        if self.prototypes_.shape != (len(self.classes_), self.n_features_in_):
            raise ValueError(
                f"the prototypes have shape {self.prototypes_.shape}, expected "
                f"{(len(self.classes_), self.n_features_in_)}"
            )


class SemiNCMHead(NCMHead):
    """``NCMHead`` that learns from unlabelled training vectors too (``fit(..., X_unlabelled)``).

    The same prototypes, moved by ``refine_steps`` soft k-means steps towards the unlabelled
    vectors they claim (Ren et al. 2018). Its own class, so that the registry's ``ncm-semi`` kind
    is told apart from ``ncm`` in saved files and reports. Measured on Fashion-MNIST
    (``bench/fewshot.py``, 20 seeds, ``efficientnet_lite0:full``): 66.0% at one label per class
    against 57.2% for ``ncm``; from 5 labels on it is no better, and at 10 worse (76.1 vs 78.3),
    so the comparison keeps both and chooses on validation.
    """

    def __init__(self, shrink_threshold=None, temperature=0.05, refine_steps=5, power=0.5):
        super().__init__(shrink_threshold, temperature, refine_steps, power)
