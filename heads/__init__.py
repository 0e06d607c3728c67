"""Heads: fast classifiers trained on cached feature vectors, behind scikit-learn's API.

``LogRegHead`` (linear probe with a validated C), ``MLPHead`` (one hidden layer in torch) and
``KNNHead`` (DINO's weighted k-NN) are interchangeable estimators; ``save_head``/``load_head``
store a fitted one in a pickle-free ``.npz`` file.
"""

import difflib

from ._compare import Method, metrics, parse_shots, run_comparison
from ._io import load_head, save_head
from ._knn import KNNHead
from ._logreg import LogRegHead
from ._mlp import MLPHead
from ._report import write_report
from ._scratch import ScratchClassifier, ScratchConfig

__all__ = [
    "HEADS",
    "KNNHead",
    "LogRegHead",
    "MLPHead",
    "Method",
    "ScratchClassifier",
    "ScratchConfig",
    "load_head",
    "make_head",
    "metrics",
    "parse_shots",
    "run_comparison",
    "save_head",
    "write_report",
]

HEADS = {"logreg": LogRegHead, "mlp": MLPHead, "knn": KNNHead}


def make_head(name: str, **params):
    """A new, unfitted head by registry name, e.g. ``make_head("knn", k=10)``.

    Args:
        name: One of ``HEADS``: "knn", "logreg" or "mlp".
        **params: Constructor parameters of that head.

    Returns:
        The unfitted estimator.
    """
    if name not in HEADS:
        message = f"Unknown head {name!r}; available: {', '.join(sorted(HEADS))}"
        close = difflib.get_close_matches(str(name), HEADS, n=1)
        raise ValueError(message + (f". Did you mean {close[0]!r}?" if close else "."))
    return HEADS[name](**params)
