"""The one table of head kinds: name, class, the few-shot protocol's settings, one-line summary.

The command line (``--head``), the comparison (its default set and the settings at each number
of labels per class), saving and loading (the kind name stored in a head file) and the service
all read this table; a head kind is named nowhere else (STYLE: a registry is one table).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from ._knn import KNNHead
from ._logreg import LogRegHead
from ._mlp import MLPHead
from ._ncm import NCMHead, SemiNCMHead

# Below this many labels per class the MLP's protocol falls back to the linear probe: measured
# on Fashion-MNIST (bench/fewshot.py, seed 0), the hidden layer early-stopped on a held-out sliver
# scored 19.8% at 1 label per class and 51.0% at 5, where the probe scored 52.0% and 69.0%; at
# 10 labels it is within ~2 points of the probe (issue 15).
MLP_FALLBACK_BELOW = 10
# From this many labels per class on, C is chosen on one stratified 20% hold-out (>= 6 images of
# every class) instead of 5 folds: as sound, and 5x cheaper on the full training sets.
LOGREG_HOLDOUT_FROM = 30


@dataclass(frozen=True)
class HeadKind:
    """One kind of head.

    Attributes:
        name: The name used on the command line, in reports and in saved head files.
        cls: The estimator class (scikit-learn API; ``_export_state``/``_import_state`` for
            saving).
        summary: One line saying what the head does under the protocol, for reports.
        protocol: ``(labels_per_class, seed) -> constructor params`` used by the comparison.
        default: Whether the comparison runs it when no ``--head`` list is given.
        uses_val: Whether ``fit`` accepts ``X_val``/``y_val`` (a validation cache).
        uses_unlabelled: Whether ``fit`` learns from ``X_unlabelled``, the training images
            without labels (semi-supervised; the comparison gives it the rest of the training
            pool, never validation or test images).
    """

    name: str
    cls: type
    summary: str
    protocol: Callable[[int, int], dict]
    default: bool = True
    uses_val: bool = False
    uses_unlabelled: bool = False


def _logreg_protocol(per_class: int, seed: int) -> dict:
    # CL2N: per-feature statistics from a handful of images are noise; centring and unit length
    # are not (1 label per class on Fashion-MNIST: 52.0% against 29.6% standardised, issue 15).
    # With >= 2 labels per class C is chosen by stratified cross-validation (k <= 5, capped by
    # the class size); with one label there is nothing to hold out, so C is fixed.
    if per_class >= LOGREG_HOLDOUT_FROM:
        return {"val_size": 0.2, "normalize": "cl2n", "random_state": seed}
    if per_class >= 2:
        return {"cv": 5, "normalize": "cl2n", "random_state": seed}
    return {"C": 1.0, "normalize": "cl2n", "random_state": seed}


_KINDS = (
    HeadKind(
        "logreg",
        LogRegHead,
        "linear probe: CL2N features, L-BFGS, C from 1e-6..1e5 by stratified k-fold CV "
        f"(k <= 5; a 20% hold-out from {LOGREG_HOLDOUT_FROM} labels per class; C=1 at one label)",
        _logreg_protocol,
        uses_val=True,
    ),
    HeadKind(
        "mlp",
        MLPHead,
        "1 hidden layer (512), AdamW, early stopping on a validation split; below "
        f"{MLP_FALLBACK_BELOW} labels per class the linear probe instead",
        lambda per_class, seed: {"fallback_below": MLP_FALLBACK_BELOW, "random_state": seed},
        uses_val=True,
    ),
    HeadKind(
        "knn",
        KNNHead,
        "cosine k-NN, k=20, T=0.07 (DINO)",
        lambda per_class, seed: {},
    ),
    HeadKind(
        "ncm",
        NCMHead,
        "nearest class mean, square-root then CL2N vectors, cosine (SimpleShot)",
        lambda per_class, seed: {"power": 0.5},
    ),
    HeadKind(
        "ncm-semi",
        SemiNCMHead,
        "ncm, then 5 soft k-means steps over the training images without labels "
        "(semi-supervised: sees those images, never their labels)",
        lambda per_class, seed: {},
        uses_unlabelled=True,
    ),
)

HEAD_KINDS: dict[str, HeadKind] = {}
for _kind in _KINDS:
    if _kind.name in HEAD_KINDS:  # an invariant of the table above
        raise RuntimeError(f"Head kind {_kind.name!r} is registered twice.")
    HEAD_KINDS[_kind.name] = _kind

# Views of the table, kept as public names.
HEADS: dict[str, type] = {k.name: k.cls for k in HEAD_KINDS.values()}
DEFAULT_HEADS: tuple[str, ...] = tuple(k.name for k in HEAD_KINDS.values() if k.default)


def head_kind(name: str) -> HeadKind:
    """The registry entry for ``name``; an unknown name lists the kinds and suggests one."""
    if name not in HEAD_KINDS:
        message = f"Unknown head {name!r}; available: {', '.join(sorted(HEAD_KINDS))}"
        close = difflib.get_close_matches(str(name), HEAD_KINDS, n=1)
        raise ValueError(message + (f". Did you mean {close[0]!r}?" if close else "."))
    return HEAD_KINDS[name]


def make_head(name: str, **params):
    """A new, unfitted head by registry name, e.g. ``make_head("knn", k=10)``.

    Args:
        name: One of ``HEADS``: "knn", "logreg", "mlp", "ncm" or "ncm-semi".
        **params: Constructor parameters of that head.

    Returns:
        The unfitted estimator.
    """
    return head_kind(name).cls(**params)


def make_protocol_head(name: str, per_class: int, *, seed: int = 0, **overrides):
    """A head with the comparison protocol's settings for ``per_class`` labels per class.

    Args:
        name: A registered head kind.
        per_class: Labelled training images per class the head will be fitted on.
        seed: Seed of the head's own splits and initialisation.
        **overrides: Constructor parameters that replace the protocol's.
    """
    kind = head_kind(name)
    return kind.cls(**{**kind.protocol(int(per_class), int(seed)), **overrides})


def kind_of(head) -> str:
    """The registry name of a head's exact class; ValueError for anything else."""
    for kind in HEAD_KINDS.values():
        if type(head) is kind.cls:
            return kind.name
    raise ValueError(
        f"Not a registered head: {type(head).__name__}; the heads are "
        f"{', '.join(k.cls.__name__ for k in HEAD_KINDS.values())}."
    )


def describe_head(head) -> dict:
    """``{"kind": ..., **settings}``: what a (fitted) head actually ran with, for reports."""
    return {"kind": kind_of(head), **head.describe()}
