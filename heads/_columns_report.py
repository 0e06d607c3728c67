"""The report's column ranking: which column for this data (issue 15).

Reads ``results["columns"]`` (written by ``colhead.compare`` when ``--column`` names several):
per column and shot count, the head chosen on validation and its test score with the 95%
interval; the rows that ride on no frozen column (scratch, scratch-column, finetune) as
references. A table for report.md and ``columns.png``: accuracy vs labels per class, one line
per column.
"""

from __future__ import annotations

import numpy as np

from ._plots import _yerr
from ._stats import format_ci

REF_STYLE = {"scratch": ("#d62728", "--"), "scratch-column": ("#8c564b", ":")}
REF_STYLE["finetune"] = ("#000000", "-.")
# The columns' lines: tab10 without the red, brown and grey of the references (a fourth column
# was drawn in the scratch CNN's red).
COLUMN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#e377c2", "#bcbd22", "#17becf")


def _label(shots: str) -> str:
    return "all" if shots == "all" else shots


def columns_section(results: dict) -> list[str]:
    """Markdown: the columns ranked, best head per shot count (chosen on validation)."""
    cols = (results.get("columns") or {}).get("columns")
    if not cols:
        return []
    order = [b["shots"] for b in cols[0]["by_shots"]]
    lines = [
        "## Which column: the best head of each column (chosen on validation, test balanced "
        "accuracy %)",
        "",
        "| column | dims | " + " | ".join(_label(o) for o in order) + " |",
        "|---|---:|" + "---:|" * len(order),
    ]
    best = {b["shots"]: b["column"] for b in results["columns"]["best_column_by_shots"]}
    for c in cols:
        cells = []
        for b in c["by_shots"]:
            cell = f"{format_ci(b['test'], b['test_ci'])} {b['method']}"
            cells.append(f"**{cell}**" if best.get(b["shots"]) == c["column"] else cell)
        lines.append(f"| {c['column']} | {c['dim']} | " + " | ".join(cells) + " |")
    for name, rows in (results["columns"].get("references") or {}).items():
        by = {r["shots"]: r for r in rows}
        cells = [format_ci(by[o]["test"], by[o]["test_ci"]) if o in by else "" for o in order]
        lines.append(f"| *{name}* (reference) | | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Columns in order of their mean validation score over the shot counts; in bold the "
        "column chosen on validation at each shot count. Every column is trained on the same "
        "labelled images and chosen on the same validation split.",
        "",
    ]
    return lines


def plot_columns(results: dict, path) -> bool:
    """``columns.png``: test balanced accuracy vs labels per class, one line per column."""
    cols = (results.get("columns") or {}).get("columns")
    if not cols:
        return False
    import matplotlib.pyplot as plt

    order = [b["shots"] for b in cols[0]["by_shots"]]
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(6.8, 4.0), dpi=120)
    for k, c in enumerate(cols):
        v = np.array([b["test"] for b in c["by_shots"]])
        colour = COLUMN_COLOURS[k % len(COLUMN_COLOURS)]
        ax.errorbar(
            x + 0.04 * (k - len(cols) / 2), 100 * v,
            yerr=_yerr(v, [b["test_ci"] for b in c["by_shots"]]),
            marker="o", capsize=3, color=colour, label=f"{c['column']} ({c['dim']} d)",
        )  # fmt: skip
    for name, rows in (results["columns"].get("references") or {}).items():
        by = {r["shots"]: r for r in rows}
        xs = [i for i, o in enumerate(order) if o in by]
        colour, style = REF_STYLE.get(name, ("#7f7f7f", "--"))
        ax.plot(
            xs, [100 * by[order[i]]["test"] for i in xs], style, marker="s", markersize=4,
            color=colour, label=name,
        )  # fmt: skip
    if results.get("classes"):  # balanced accuracy of guessing: one over the classes
        ax.axhline(100 / len(results["classes"]), ls=":", color="k", lw=1, label="chance")
    ax.set_xticks(x, [_label(o) for o in order])
    ax.set_xlabel("labelled images per class")
    ax.set_ylim(0, 112)  # as the report's other plots: 100% and its error bar stay inside
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("test balanced accuracy (%)")
    ax.set_title("Which column: best head per column, chosen on validation", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, bbox_inches="tight")  # the legend outside the axes is kept
    plt.close(fig)
    return True
