"""Heads: fast classifiers trained on cached feature vectors, behind scikit-learn's API.

``LogRegHead`` (linear probe with a selected C), ``MLPHead`` (one hidden layer in torch),
``KNNHead`` (DINO's weighted k-NN), ``NCMHead`` (SimpleShot's nearest class mean) and
``SemiNCMHead`` (the same, refined on the training images without labels) are
interchangeable estimators, listed once in the registry ``HEAD_KINDS`` (with the comparison
protocol's settings); ``save_head``/``load_head`` store a fitted one in a pickle-free ``.npz``
file. ``ScratchClassifier`` is the from-scratch CNN baseline the column is compared against.
"""

from ._io import load_head, save_head
from ._knn import KNNHead
from ._logreg import LogRegHead
from ._mlp import MLPHead
from ._ncm import NCMHead, SemiNCMHead
from ._protocol import (
    Method,
    head_methods,
    make_head_for,
    metrics,
    parse_shots,
    run_comparison,
    select_best,
)
from ._registry import (
    DEFAULT_HEADS,
    HEAD_KINDS,
    HEADS,
    HeadKind,
    describe_head,
    head_kind,
    kind_of,
    make_head,
    make_protocol_head,
)
from ._report import write_report
from ._scratch import ScratchClassifier, ScratchConfig

__all__ = [
    "DEFAULT_HEADS",
    "HEADS",
    "HEAD_KINDS",
    "HeadKind",
    "KNNHead",
    "LogRegHead",
    "MLPHead",
    "Method",
    "NCMHead",
    "ScratchClassifier",
    "ScratchConfig",
    "SemiNCMHead",
    "describe_head",
    "head_kind",
    "head_methods",
    "kind_of",
    "load_head",
    "make_head",
    "make_head_for",
    "make_protocol_head",
    "metrics",
    "parse_shots",
    "run_comparison",
    "save_head",
    "select_best",
    "write_report",
]
