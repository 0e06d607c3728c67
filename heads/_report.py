"""Write a comparison as ``results.json``, ``report.md`` and the PNG plots a person looks at first.

The report says only what ran (no scratch wording without a scratch row), names the column and
whether it is pretrained, puts every accuracy beside its 95% interval, reports the method chosen
on validation (never on test), and warns at the top when the numbers cannot carry much weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._columns_report import columns_section, plot_columns
from ._gallery import plot_embedding_map, plot_misclassified
from ._plots import (
    column_title,
    extraction_note,
    methods,
    plot_by_method,
    plot_confusion,
    plot_per_class,
    plot_time,
    plot_vs_shots,
    shot_order,
    summary_at,
)
from ._protocol import SELECT_METRIC
from ._stats import format_ci, natural_order

SMALL_TEST = 100  # below this many test images, a 95% interval is wider than +-10 points
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "top1": "top-1 accuracy"}


def write_report(
    results: dict, out: str | Path, *, y_test=None, test_features=None, load_images=None
) -> Path:
    """Write results.json, the plots and report.md under ``out``; return the report's path.

    Args:
        results: what ``run_comparison`` returned, plus the pipeline's keys (dataset, column,
            pretrained, classes, n_train, n_test, chance, extraction, provenance).
        y_test: test labels (for per-class accuracy, the map and the misclassified images).
        test_features: test vectors, for the embedding map.
        load_images: ``positions -> uint8 images``, for the misclassified examples.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    results["warnings"] = report_warnings(results)
    if y_test is not None and results.get("best_head"):
        results["per_class"] = per_class(results, np.asarray(y_test))
    plots = {
        "accuracy_vs_shots.png": lambda p: plot_vs_shots(results, p),
        "accuracy_by_method.png": lambda p: plot_by_method(results, p),
        "embedding_map.png": lambda p: plot_embedding_map(results, p, test_features, y_test),
        "per_class_accuracy.png": lambda p: plot_per_class(results, p),
        "confusion_best_head.png": lambda p: plot_confusion(results, p),
        "misclassified.png": lambda p: (
            y_test is not None and plot_misclassified(results, p, np.asarray(y_test), load_images)
        ),
        "train_time.png": lambda p: plot_time(results, p),
        "columns.png": lambda p: plot_columns(results, p),
    }
    made = [name for name, draw in plots.items() if draw(out / name)]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json))
    path = out / "report.md"
    path.write_text(markdown(results, made))
    return path


def _cell(text) -> str:
    """A class name as one Markdown table cell: pipes and line breaks would split the table."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _json(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def report_warnings(results: dict) -> list[str]:
    """Reasons the numbers cannot carry much weight, for the top of the report."""
    out = []
    if not results.get("pretrained", True):
        out.append(
            f"The column {results['column']} has random weights (not pretrained): its vectors "
            "say nothing about what a pretrained column is worth. Use it for tests only."
        )
    if results["n_test"] < SMALL_TEST:
        out.append(
            f"Only {results['n_test']} test images: one image moves top-1 by "
            f"{100 / results['n_test']:.1f} points, and differences inside the 95% intervals "
            f"below are noise. Use at least {SMALL_TEST} test images to compare methods."
        )
    return out


def per_class(results: dict, y_test: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support per class for the best head (classification_report)."""
    from sklearn.metrics import classification_report

    pred = np.asarray(results["predictions"][results["best_head"]["method"]])
    labels = np.arange(len(results["classes"]))
    rep = classification_report(y_test, pred, labels=labels, output_dict=True, zero_division=0)
    return [
        {
            "class": results["classes"][i],
            "precision": rep[str(i)]["precision"],
            "recall": rep[str(i)]["recall"],
            "f1": rep[str(i)]["f1-score"],
            "support": int(rep[str(i)]["support"]),
        }
        for i in labels
    ]


def markdown(results: dict, plots: list[str]) -> str:
    """The report's text."""
    order, ms = shot_order(results), methods(results)
    by = {(s["method"], s["shots"]): s for s in results["summary"]}
    heads = [m for m in ms if m not in ("scratch", "finetune", "scratch-column")]  # frozen
    lines = [f"# {column_title(results)} on {results['dataset']}", ""]
    lines += [f"> **Warning:** {w}" + "\n>" for w in results.get("warnings", [])]
    if results.get("warnings"):
        lines[-1] = lines[-1].removesuffix("\n>")
        lines.append("")
    against = ", against a CNN trained from scratch on the same images" if "scratch" in ms else ""
    p = results.get("protocol", {})
    lines += [
        f"Column **{results['column']}** (frozen) + heads {', '.join(heads)}{against}. "
        f"{results['n_train']} training images ({p.get('n_val', 0)} of them held out for "
        f"validation), {results['n_test']} test images, {len(results['classes'])} classes; "
        f"majority-class accuracy on test {100 * results['chance']:.1f}%.",
        "",
    ]
    lines += _headline(results, by) + _selection_table(results) + columns_section(results)
    for key in (SELECT_METRIC, "top1"):
        lines += [f"## Test {METRIC_NAMES[key]} (%) by labelled images per class", ""]
        lines += _shots_table(key, order, ms, by) + [""]
    lines += [
        "[lo, hi] is a 95% interval. One run: Wilson's interval (top-1) or the per-class "
        "binomial interval (balanced accuracy) over the test images. Repeats with different "
        "labelled images: mean +- t-interval, never narrower than the runs' own test-set "
        "interval (repeats that agree do not remove the test set's sampling error).",
        "",
    ]
    lines += _all_metrics_table(results, order[-1]) + _per_class_table(results)
    if plots:
        lines += ["## Plots", ""] + [f"![{q[:-4].replace('_', ' ')}]({q})" for q in plots] + [""]
    prov = results.get("provenance", {})
    lines += ["## How these numbers were made", ""] + [f"- {k}: {v}" for k, v in prov.items()]
    return "\n".join(lines + [""])


def _headline(results: dict, by: dict) -> list[str]:
    best = results.get("best")
    if not best:
        return []
    s = by[(best["method"], best["shots"])]
    n = "all training images" if best["shots"] == "all" else f"{best['shots']} images per class"
    text = (
        f"**With {n}, the method chosen on validation is {best['method']}: test balanced "
        f"accuracy {format_ci(best['test'], best['test_ci'])}%, top-1 "
        f"{format_ci(best['test_top1'], best['test_top1_ci'])}%** (trained in "
        f"{s['fit_seconds']:.2f} s)."
    )
    sc = by.get(("scratch", best["shots"]))
    if sc is not None and best["method"] != "scratch":
        text += (
            f" The scratch CNN: {format_ci(sc[SELECT_METRIC], sc.get(SELECT_METRIC + '_ci'))}% "
            f"balanced accuracy, trained in {sc['fit_seconds']:.1f} s."
        )
    return [text, ""]


def _selection_table(results: dict) -> list[str]:
    rows = (results.get("best") or {}).get("by_shots") or []
    if not rows:
        return []
    lines = [
        "## Best method per shot count (chosen on validation, reported on test)",
        "",
        "| images per class | chosen | validation bal. acc. | test bal. acc. [95%] |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shots']} | {r['method']} | {100 * r['validation']:.1f} | "
            f"{format_ci(r['test'], r['test_ci'])} |"
        )
    return lines + [""]


def _shots_table(key, order, ms, by) -> list[str]:
    lines = ["| method | " + " | ".join(order) + " |", "|---|" + "---:|" * len(order)]
    for m in ms:
        cells = []
        for o in order:
            s = by.get((m, o))
            cells.append("" if s is None else format_ci(s[key], s.get(key + "_ci")))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _all_metrics_table(results: dict, last: str) -> list[str]:
    rows = summary_at(results, last)
    n = "All training images" if last == "all" else f"{last} images per class"
    has5 = any("top5" in s for s in rows)
    lines = [f"## {n}: every metric (test, %)", ""]
    head = "| method | top-1 [95%] | balanced acc. [95%] | macro-F1 |" + (
        " top-5 |" if has5 else ""
    )
    lines += [head + " fit (s) | predict (s) |", "|---|" + "---:|" * (5 + has5)]
    for s in rows:
        t5 = f" {format_ci(s['top5'], s.get('top5_ci'))} |" if has5 else ""
        lines.append(
            f"| {s['method']} | {format_ci(s['top1'], s.get('top1_ci'))} | "
            f"{format_ci(s[SELECT_METRIC], s.get(SELECT_METRIC + '_ci'))} | "
            f"{100 * s['macro_f1']:.1f} |{t5} {s['fit_seconds']:.2f} | "
            f"{s['predict_seconds']:.2f} |"
        )
    ext = extraction_note(results.get("extraction") or {})
    return lines + ["", f"Feature extraction: {ext}.", ""]


def _per_class_table(results: dict) -> list[str]:
    per = results.get("per_class")
    if not per:
        return []
    lines = [
        f"## Per class: {results['best_head']['method']} (best head on validation), test set",
        "",
        "| class | precision | recall | F1 | images |",
        "|---|---:|---:|---:|---:|",
    ]
    for i in natural_order([r["class"] for r in per]):
        r = per[i]
        lines.append(
            f"| {_cell(r['class'])} | {100 * r['precision']:.1f} | {100 * r['recall']:.1f} | "
            f"{100 * r['f1']:.1f} | {r['support']} |"
        )
    return lines + [""]
