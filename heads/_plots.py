"""The report's plots of scores: by method, by labelled images, confusion, per class, time.

Every function takes the comparison's ``results`` dict and a path, draws one PNG and returns
whether it drew it. House rules for all of them: labels go in legends or margins, never on top of
data; accuracy axes run 0..100 with headroom above 100 (error bars and labels stay inside); class
names appear in natural order (p0.00 < p0.33 < p1.00) and long class lists stay readable.
"""

from __future__ import annotations

import textwrap

import numpy as np

from ._protocol import SELECT_METRIC
from ._stats import natural_order

COLOURS = {"logreg": "#1f77b4", "mlp": "#2ca02c", "knn": "#9467bd", "ncm": "#ff7f0e"}
COLOURS["scratch"] = "#d62728"
COLOURS |= {"finetune": "#000000", "scratch-column": "#8c564b"}  # compare's opt-in rows
LABELS = {  # rows that are not a head on the frozen column say what they are
    "scratch": "scratch CNN (no pretraining)",
    "finetune": "column fine-tuned end to end",
    "scratch-column": "column's architecture, random init",
}
MAX_TICKS = 40  # above this many classes, label every k-th tick


def colour(method: str) -> str:
    return COLOURS.get(method, "#7f7f7f")


def summary_at(results: dict, shots: str) -> list[dict]:
    return [s for s in results["summary"] if s["shots"] == shots]


def shot_order(results: dict) -> list[str]:
    seen = list(dict.fromkeys(s["shots"] for s in results["summary"]))
    return sorted(seen, key=lambda s: (s == "all", int(s) if s != "all" else 0))


def methods(results: dict) -> list[str]:
    return list(dict.fromkeys(s["method"] for s in results["summary"]))


def column_title(results: dict) -> str:
    kind = "pretrained" if results.get("pretrained") else "random weights, not pretrained"
    return f"{results['column']} ({kind})"


def _save(fig, path) -> bool:
    fig.savefig(path, bbox_inches="tight")  # nothing cut: long titles and rotated ticks fit
    import matplotlib.pyplot as plt

    plt.close(fig)
    return True


def _yerr(values: np.ndarray, cis: list) -> np.ndarray:
    lo = [v - c[0] if c else 0 for v, c in zip(values, cis)]
    hi = [c[1] - v if c else 0 for v, c in zip(values, cis)]
    return 100 * np.clip(np.array([lo, hi], dtype=float), 0, None)


def _percent_axis(ax, label: str) -> None:
    ax.set_ylim(0, 112)  # headroom: 100% and its error bar are not drawn on the frame
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(label)


def plot_by_method(results: dict, path) -> bool:
    """Top-1 on test with all training images, 95% intervals, majority class as a line."""
    import matplotlib.pyplot as plt

    last = shot_order(results)[-1]
    rows = summary_at(results, last)
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    names = [r["method"] for r in rows]
    vals = np.array([r["top1"] for r in rows])
    ax.bar(
        names,
        100 * vals,
        yerr=_yerr(vals, [r.get("top1_ci") for r in rows]),
        capsize=4,
        color=[colour(n) for n in names],
        label="_bars",
    )
    for i, (v, r) in enumerate(zip(vals, rows)):  # inside the bar's foot: never on the error bar
        if v >= 0.1:
            ax.text(i, 2, f"{100 * v:.1f}%", ha="center", va="bottom", fontsize=8, color="white")
        else:  # too short a bar to hold it: above its whisker
            top = 100 * (r.get("top1_ci") or [v, v])[1] + 1.5
            ax.text(i, top, f"{100 * v:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.axhline(100 * results["chance"], ls=":", c="k", lw=1, label="majority class")
    best = (results.get("best") or {}).get("method")
    if best in names:
        ax.get_xticklabels()[names.index(best)].set_fontweight("bold")
    _percent_axis(ax, "test top-1 accuracy (%)")
    n = "all" if last == "all" else f"{last} per class"
    ax.set_title(
        f"{results['dataset']}: {n} training images; bold = best on validation\nbars: 95% interval",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_vs_shots(results: dict, path) -> bool:
    """Balanced accuracy against labelled images per class, one line per method."""
    import matplotlib.pyplot as plt

    order = shot_order(results)
    if len(order) < 2:
        return False
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    xs = np.arange(len(order))
    ms = methods(results)
    for k, m in enumerate(ms):
        dx = 0.06 * (k - (len(ms) - 1) / 2)  # dodge: equal scores and their bars stay visible
        ss = {s["shots"]: s for s in results["summary"] if s["method"] == m}
        y = np.array([ss[o][SELECT_METRIC] if o in ss else np.nan for o in order])
        cis = [ss[o].get(SELECT_METRIC + "_ci") if o in ss else None for o in order]
        label = LABELS.get(m, f"column + {m}")
        ax.errorbar(
            xs + dx, 100 * y, yerr=_yerr(y, cis), marker="o", capsize=3, color=colour(m),
            label=label, ls="--" if m == "scratch" else "-",
        )  # fmt: skip
    per_class = results["n_train"] / max(1, len(results["classes"]))
    ax.set_xticks(xs, [f"all (~{per_class:.0f})" if o == "all" else o for o in order])
    ax.set_xlabel("labelled training images per class")
    ax.axhline(100 / len(results["classes"]), ls=":", c="k", lw=1, label="chance")
    _percent_axis(ax, "test balanced accuracy (%)")
    ax.set_title(f"Label efficiency: {column_title(results)}\nbars: 95% interval", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _class_ticks(ax, names: list[str], axis: str) -> None:
    step = max(1, int(np.ceil(len(names) / MAX_TICKS)))
    pos = list(range(0, len(names), step))
    labels = [textwrap.shorten(names[i], 24, placeholder="…") for i in pos]
    fs = 8 if len(names) <= 20 else 6
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=45 if len(names) > 4 else 0, ha="right", fontsize=fs)
        if len(names) <= 4:
            ax.set_xticklabels(labels, ha="center", fontsize=fs)
    else:
        ax.set_yticks(pos, labels, fontsize=fs)


def plot_confusion(results: dict, path) -> bool:
    """Row-normalised confusion of the best head (chosen on validation), natural class order."""
    import matplotlib.pyplot as plt

    best = (results.get("best_head") or {}).get("method")
    if best is None or best not in results.get("confusion", {}):
        return False
    order = natural_order(results["classes"])
    names = [results["classes"][i] for i in order]
    cm = np.array(results["confusion"][best], dtype=float)[np.ix_(order, order)]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(14, 3.5 + 0.4 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    _class_ticks(ax, names, "x")
    _class_ticks(ax, names, "y")
    if len(names) <= 20:  # counts stay legible; beyond that the colours carry it
        for i in range(len(names)):
            for j in range(len(names)):
                c = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=c)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion of {best} (best head on validation)\non the test set", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    return _save(fig, path)


def plot_per_class(results: dict, path) -> bool:
    """Recall of each class for the best head (from ``classification_report``), with support."""
    import matplotlib.pyplot as plt

    per = results.get("per_class")
    if not per:
        return False
    names = [r["class"] for r in per]
    order = natural_order(names)[::-1]  # barh draws bottom-up: first class on top
    rec = np.array([per[i]["recall"] for i in order])
    fig, ax = plt.subplots(figsize=(7, 1.2 + (0.28 if len(per) <= 30 else 0.2) * len(per)), dpi=120)
    ax.barh(range(len(order)), 100 * rec, color=colour(results["best_head"]["method"]))
    labels = [
        f"{textwrap.shorten(names[i], 32, placeholder='…')} (n={per[i]['support']}): "
        f"{100 * per[i]['recall']:.0f}%"
        for i in order
    ]  # the value in the label: a 0% class still reads, and nothing is drawn over the bars
    # every class gets its row and its label: the figure grows with the class count
    ax.set_yticks(range(len(order)), labels, fontsize=8 if len(order) <= 30 else 6)
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.set_xlim(0, 112)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("test recall: correctly labelled share of the class (%)")
    mean = 100 * float(np.mean([r["recall"] for r in per]))  # = balanced accuracy
    ax.axvline(mean, ls=":", c="k", lw=1, label="mean of the classes\n(balanced accuracy)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Per-class accuracy of {results['best_head']['method']}", fontsize=9)
    return _save(fig, path)


def seconds(v: float) -> str:
    """``"37.1 s"``, ``"12 ms"``, ``"<1 ms"``: a duration with its digits where they matter."""
    if v >= 1:
        return f"{v:.1f} s"
    return f"{1000 * v:.0f} ms" if v >= 1e-3 else "<1 ms"


def plot_time(results: dict, path) -> bool:
    """Training time per method with all images, and the one-off extraction as its own bar
    (or, when the caches were reused, a note that it was not timed)."""
    import matplotlib.pyplot as plt

    rows = summary_at(results, shot_order(results)[-1])
    if not rows:
        return False
    ext = results.get("extraction") or {}
    names = [r["method"] for r in rows]
    vals = [max(r["fit_seconds"], 1e-4) for r in rows]
    colours = [colour(n) for n in names]
    if ext.get("one_off_seconds"):
        names.append("extraction\n(one-off)")
        vals.append(ext["one_off_seconds"])
        colours.append("#bbbbbb")
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.45 * len(names)), dpi=120)
    bars = ax.barh(names[::-1], vals[::-1], color=colours[::-1])
    ax.bar_label(bars, labels=[seconds(v) for v in vals[::-1]], padding=3, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(vals) / 3, max(vals) * 20)  # room on the right for the longest label
    ax.set_xlabel("seconds (log scale)")
    ax.set_title(f"Training time with all images\n{extraction_note(ext)}", fontsize=9)
    return _save(fig, path)


def extraction_note(ext: dict) -> str:
    """What the extraction cost, honestly: timed here, estimated from a partial run, or reused."""
    if not ext:
        return "extraction not timed"
    if ext.get("written", 0) == 0:
        return f"features reused from existing caches ({ext.get('reused', 0)} rows): not timed"
    if ext.get("reused", 0) == 0:
        return f"one-off extraction: {ext['one_off_seconds']:.0f} s for {ext['written']} images"
    return (
        f"one-off extraction ~{ext['one_off_seconds']:.0f} s (estimated: {ext['written']} images "
        f"extracted in {ext['seconds']:.0f} s, {ext['reused']} reused)"
    )
