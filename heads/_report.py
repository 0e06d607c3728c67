"""Write a comparison as ``results.json``, ``report.md`` and PNG plots a person would look at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The label-efficiency plot shows balanced accuracy: few-shot training sets are balanced, and
# top-1 on an imbalanced test set would reward whatever predicts the majority class.
METRIC = "balanced_accuracy"
COLOURS = {"logreg": "#1f77b4", "mlp": "#2ca02c", "knn": "#9467bd", "scratch": "#d62728"}


def _colour(method: str) -> str:
    return COLOURS.get(method, "#7f7f7f")


def write_report(results: dict, out: str | Path) -> Path:
    """Write results.json, the plots and report.md under ``out``; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json))
    plots = {
        "accuracy_by_method.png": _plot_by_method,
        "accuracy_vs_shots.png": _plot_vs_shots,
        "confusion_best_head.png": _plot_confusion,
        "train_time.png": _plot_time,
    }
    made = []
    for name, fn in plots.items():
        if fn(results, out / name):
            made.append(name)
    path = out / "report.md"
    path.write_text(_markdown(results, made))
    return path


def _json(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _summary(results: dict, shots: str | None = None) -> list[dict]:
    return [s for s in results["summary"] if shots is None or s["shots"] == shots]


def _shot_order(results: dict) -> list[str]:
    seen = list(dict.fromkeys(s["shots"] for s in results["summary"]))
    return sorted(seen, key=lambda s: (s == "all", int(s) if s != "all" else 0))


def _methods(results: dict) -> list[str]:
    return list(dict.fromkeys(s["method"] for s in results["summary"]))


def _best_head(results: dict) -> str | None:
    heads = [s for s in _summary(results, "all") if s["method"] != "scratch"]
    return max(heads, key=lambda s: s["top1"])["method"] if heads else None


def _plot_by_method(results, path) -> bool:
    import matplotlib.pyplot as plt

    rows = _summary(results, "all")
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    names = [r["method"] for r in rows]
    vals = [100 * r["top1"] for r in rows]
    bars = ax.bar(names, vals, color=[_colour(n) for n in names])
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in vals], padding=2)
    chance = 100 * results["chance"]
    ax.axhline(chance, ls=":", c="k", lw=1)
    ax.text(len(names) - 0.5, chance, " majority class", va="bottom", ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{results['dataset']}: all {results['n_train']} training images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_vs_shots(results, path) -> bool:
    import matplotlib.pyplot as plt

    order = _shot_order(results)
    if len(order) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    xs = np.arange(len(order))
    for m in _methods(results):
        ss = {s["shots"]: s for s in _summary(results) if s["method"] == m}
        y = np.array([100 * ss[o][METRIC] if o in ss else np.nan for o in order])
        e = np.array([100 * ss[o].get(METRIC + "_std", 0) if o in ss else np.nan for o in order])
        label = f"column + {m}" if m != "scratch" else "scratch CNN (no pretraining)"
        ax.errorbar(
            xs,
            y,
            yerr=e,
            marker="o",
            capsize=3,
            color=_colour(m),
            label=label,
            ls="--" if m == "scratch" else "-",
        )
    per_class = results["n_train"] / max(1, len(results["classes"]))
    ax.set_xticks(xs, [f"all (~{per_class:.0f})" if o == "all" else o for o in order])
    ax.set_xlabel("labelled training images per class")
    ax.set_ylabel("test balanced accuracy (%)")
    ax.axhline(100 / len(results["classes"]), ls=":", c="k", lw=1)
    ax.text(xs[0], 100 / len(results["classes"]), "chance", va="bottom", fontsize=8)
    ax.set_ylim(0, 100)  # the whole scale: no axis cut that makes small gaps look large
    ax.set_title(f"What the pretrained column is worth: {results['column']}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_confusion(results, path) -> bool:
    import matplotlib.pyplot as plt

    best = _best_head(results)
    if best is None or best not in results["confusion"]:
        return False
    cm = np.array(results["confusion"][best], dtype=float)
    classes = results["classes"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(12, 2.5 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion of the best head ({best}, all training images)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_time(results, path) -> bool:
    import matplotlib.pyplot as plt

    rows = _summary(results, "all")
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    names = [r["method"] for r in rows]
    vals = [max(r["fit_seconds"], 1e-3) for r in rows]
    bars = ax.barh(names, vals, color=[_colour(n) for n in names])
    ax.bar_label(bars, labels=[f"{v:.2f} s" for v in vals], padding=2, fontsize=8)
    ext = results.get("extract_seconds")
    if ext:
        ax.axvline(ext, ls="--", c="k", lw=1)
        ax.text(ext, len(names) - 0.5, f" one-off extraction {ext:.0f} s", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training time on all images (s, log scale)")
    ax.set_title("training time by method", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _markdown(results: dict, plots: list[str]) -> str:
    order = _shot_order(results)
    methods = _methods(results)
    by = {(s["method"], s["shots"]): s for s in results["summary"]}
    lines = [
        f"# colhead comparison: {results['dataset']}",
        "",
        f"Column **{results['column']}** (frozen) + heads, against a CNN trained from scratch on "
        f"the same images. {results['n_train']} training and {results['n_test']} test images, "
        f"{len(results['classes'])} classes; majority-class accuracy "
        f"{100 * results['chance']:.1f}%.",
        "",
    ]
    best = _best_head(results)
    if best and ("scratch", "all") in by:
        b, s = by[(best, "all")], by[("scratch", "all")]
        lines += [
            f"**With all training images: column + {best} {100 * b['top1']:.1f}% vs scratch "
            f"{100 * s['top1']:.1f}% top-1** (balanced accuracy {100 * b[METRIC]:.1f}% vs "
            f"{100 * s[METRIC]:.1f}%); the head trained in {b['fit_seconds']:.2f} s, the "
            f"scratch model in {s['fit_seconds']:.1f} s.",
            "",
        ]
    for key, title in (("top1", "top-1 accuracy"), (METRIC, "balanced accuracy")):
        lines += [f"## Test {title} (%) by labelled images per class", ""]
        lines += _shots_table(results, key, order, methods, by) + [""]
    lines += ["± is the standard deviation over repeats with different labelled images.", ""]
    lines += ["## All training images: every metric", ""]
    has5 = any("top5" in s for s in _summary(results, "all"))
    head = "| method | top-1 | balanced acc. | macro-F1 |" + (" top-5 |" if has5 else "")
    lines += [head + " fit (s) | predict (s) |", "|---|" + "---:|" * (5 + has5)]
    for s in _summary(results, "all"):
        t5 = f" {100 * s['top5']:.1f} |" if has5 else ""
        lines.append(
            f"| {s['method']} | {100 * s['top1']:.1f} | {100 * s['balanced_accuracy']:.1f} | "
            f"{100 * s['macro_f1']:.1f} |{t5} {s['fit_seconds']:.2f} | "
            f"{s['predict_seconds']:.2f} |"
        )
    lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
        lines.append("")
    prov = results.get("provenance", {})
    lines += ["## How these numbers were made", ""]
    lines += [f"- {k}: {v}" for k, v in prov.items()]
    lines.append("")
    return "\n".join(lines)


def _shots_table(results, key, order, methods, by) -> list[str]:
    lines = ["| method | " + " | ".join(order) + " |", "|---|" + "---:|" * len(order)]
    for m in methods:
        cells = []
        for o in order:
            s = by.get((m, o))
            if s is None:
                cells.append("")
            elif s["repeats"] > 1:
                cells.append(f"{100 * s[key]:.1f} ± {100 * s[key + '_std']:.1f}")
            else:
                cells.append(f"{100 * s[key]:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
