"""Weighted k-NN head: the DINO evaluation protocol on frozen features.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers"
(https://arxiv.org/abs/2104.14294), section 4.1 and ``eval_knn.py``: L2-normalise features,
take the k most cosine-similar training vectors, weight each vote by exp(similarity / T) and
sum the weights per class.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import POSITIVE_INT, POSITIVE_REAL, HeadBase, l2_normalise


def _exact_similarities(q: torch.Tensor, train: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Recompute the kept similarities ``q[i] . train[idx[i, j]]`` in float64.

    exp(sim / T) magnifies float32 rounding by 1/T, and a matmul's rounding depends on the
    shape of the block, so this keeps the probabilities independent of ``batch_size``. Rows go
    in chunks so the gathered (rows, k, dim) tensor stays around 32 MiB.
    """
    rows = max(1, (1 << 22) // max(1, idx.shape[1] * train.shape[1]))
    out = torch.empty(idx.shape, dtype=torch.float64)
    for s in range(0, len(q), rows):
        neighbours = train[idx[s : s + rows]].double()
        out[s : s + rows] = torch.einsum("bd,bkd->bk", q[s : s + rows].double(), neighbours)
    return out


class KNNHead(HeadBase):
    """Cosine k-NN classifier with temperature-weighted votes.

    Queries are processed in blocks of ``batch_size`` rows against the whole training matrix,
    keeping only the top k of each block, so the full query x train similarity matrix never
    exists. ``k`` larger than the training set uses every training vector.

    Args:
        k: Number of neighbours.
        temperature: T in the vote weight exp(similarity / T); smaller is closer to 1-NN.
        batch_size: Query rows per block.

    Attributes:
        classes_: Class labels, sorted.
        train_: L2-normalised training features, float32, shape (n_train, n_features).
        labels_: Index into ``classes_`` of each training row.
    """

    _parameter_constraints = {
        "k": [POSITIVE_INT],
        "temperature": [POSITIVE_REAL],
        "batch_size": [POSITIVE_INT],
    }

    def __init__(self, k=20, temperature=0.07, batch_size=1024):
        self.k = k
        self.temperature = temperature
        self.batch_size = batch_size

    def fit(self, X, y) -> KNNHead:
        """Store the L2-normalised training features and their labels.

        Args:
            X: Training features, shape (n_samples, n_features).
            y: Class labels, shape (n_samples,).

        Returns:
            self.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, self.labels_ = np.unique(y, return_inverse=True)
        self.train_ = np.ascontiguousarray(l2_normalise(X))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Normalised vote mass per class, shape (n_samples, n_classes), ordered as ``classes_``."""
        check_is_fitted(self)
        self._validate_params()
        X = validate_data(self, X, reset=False, dtype=np.float32)
        queries = torch.from_numpy(np.ascontiguousarray(l2_normalise(X)))
        train = torch.from_numpy(self.train_)
        labels = torch.from_numpy(self.labels_.astype(np.int64))
        k = min(int(self.k), len(self.train_))
        votes = np.zeros((len(X), len(self.classes_)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(X), self.batch_size):
                q = queries[start : start + self.batch_size]
                idx = torch.topk(q @ train.T, k, dim=1).indices
                sims = _exact_similarities(q, train, idx)
                # Shifting by the row maximum cancels in the normalisation and keeps exp finite
                # for any temperature.
                weights = torch.exp((sims - sims.amax(dim=1, keepdim=True)) / self.temperature)
                block = torch.zeros(len(q), len(self.classes_), dtype=torch.float64)
                block.scatter_add_(1, labels[idx], weights)
                votes[start : start + len(q)] = block.numpy()
        return votes / votes.sum(axis=1, keepdims=True)

    def _fitted_settings(self) -> dict:
        return {"k_used_": min(int(self.k), len(self.train_))}

    # Serialisation hooks for heads._io: learned arrays only, never pickled objects.
    def _export_state(self) -> dict[str, np.ndarray]:
        return {"train": self.train_, "labels": self.labels_}

    def _import_state(self, state: dict[str, np.ndarray]) -> None:
        self.train_ = np.ascontiguousarray(state["train"], dtype=np.float32)
        self.labels_ = state["labels"].astype(np.intp)
