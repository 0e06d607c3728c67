"""Pictures of the test set: an embedding map of its vectors and the images the best head missed.

These need more than the scores: the test vectors (for the map) and a way to load test images
(for the misclassified examples), which the comparison pipeline passes in.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from threadpoolctl import threadpool_limits

from ._plots import column_title
from ._stats import natural_order

MAX_MAP_POINTS = 1500  # t-SNE is O(n log n) but still seconds per thousand points on 2 cores
MAX_LEGEND = 20


def embed_2d(X: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``X``: UMAP when installed, else scikit-learn's t-SNE."""
    X = np.asarray(X, dtype=np.float32)
    try:
        import umap  # optional: faster and keeps more global structure

        return umap.UMAP(random_state=seed).fit_transform(X), "UMAP"
    except ImportError:
        pass
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if X.shape[1] > 50:  # the usual t-SNE recipe: PCA to 50 dims first (van der Maaten)
        X = PCA(50, random_state=seed).fit_transform(X)
    perplexity = float(min(30, max(2, (len(X) - 1) / 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    # t-SNE's OpenMP threads spin when the cores are busy: measured on 2 shared cores, 30
    # points took 25 s with the default threads and 0.4 s with one.
    with threadpool_limits(max(1, (os.cpu_count() or 2) // 2)):
        return tsne.fit_transform(X), "t-SNE"


def plot_embedding_map(results: dict, path, X_test, y_test, *, seed: int = 0) -> bool:
    """Test vectors in 2-D, coloured by class, with a legend beside the plot."""
    import matplotlib.pyplot as plt

    if X_test is None or len(X_test) < 5:
        return False
    y = np.asarray(y_test)
    idx = np.arange(len(y))
    if len(idx) > MAX_MAP_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_MAP_POINTS, replace=False))
    xy, how = embed_2d(np.asarray(X_test)[idx], seed)
    classes = results["classes"]
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6), dpi=120)
    for k, c in enumerate(natural_order(classes)):
        sel = y[idx] == c
        if sel.any():
            ax.scatter(*xy[sel].T, s=10, alpha=0.8, color=cmap(k % cmap.N), label=classes[c])
    ax.set_xticks([])
    ax.set_yticks([])
    shown = f"{len(idx)} of {len(y)}" if len(idx) < len(y) else f"all {len(y)}"
    ax.set_title(
        f"{how} map of the test set's vectors ({shown} images)\n{column_title(results)}; "
        "close points = similar vectors",
        fontsize=9,
    )
    if len(classes) > MAX_LEGEND:  # a legend of dozens of entries hides the map
        ax.set_xlabel(f"{len(classes)} classes: colours repeat, no legend", fontsize=8)
    else:
        ax.legend(fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def misclassified(results: dict, y_test, *, n: int = 8, seed: int = 0) -> list[int]:
    """Up to ``n`` test positions the best head got wrong, from as many classes as possible."""
    best = (results.get("best_head") or {}).get("method")
    pred = np.asarray(results.get("predictions", {}).get(best, []))
    if not len(pred):
        return []
    wrong = np.flatnonzero(pred != np.asarray(y_test))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in rng.permutation(wrong):
        by_class.setdefault(int(y_test[i]), []).append(int(i))
    out: list[int] = []
    while len(out) < n and any(by_class.values()):  # round-robin over true classes
        for c in sorted(by_class):
            if by_class[c] and len(out) < n:
                out.append(by_class[c].pop())
    return out


def plot_misclassified(results: dict, path, y_test, load_images, *, seed: int = 0) -> bool:
    """A grid of test images the best head got wrong, each with its true and predicted label."""
    import matplotlib.pyplot as plt

    if load_images is None:
        return False
    picks = misclassified(results, y_test, seed=seed)
    if not picks:
        return False
    images = load_images(picks)
    best = results["best_head"]["method"]
    pred = results["predictions"][best]
    classes = results["classes"]
    cols = min(4, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.3 * cols, 2.9 * rows), dpi=120, squeeze=False, layout="constrained"
    )  # constrained: each title keeps its own room above its image
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, img in zip(axes.flat, picks, images):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        t, p = (textwrap.shorten(classes[k], 18, placeholder="…") for k in (y_test[i], pred[i]))
        ax.set_title(f"true: {t}\npredicted: {p}", fontsize=8)
    fig.suptitle(f"Test images {best} got wrong (best head on validation)", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True
