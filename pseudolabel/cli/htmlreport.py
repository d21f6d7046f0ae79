"""`pseudo report --html`: one self-contained page of charts of a run directory.

The charts are matplotlib SVG, inlined in the page: no script, no network and nothing beside the
file is needed to view it, and text stays text (searchable, sharp at any zoom). Everything is read
from what the run directory holds: each finished round's metrics.json (scores, per-class F1, the
pseudo-label mix, OOF reliability, confusion matrices) and its pool predictions (confidence).
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np

from ..core.constants import LABEL_VALUES
from ..core.store import RunDir, atomic_write_text, load_npy
from ..rounds.deliver import decision_weights, describe

CLASS_COLORS = ("#c0392b", "#7f8c8d", "#27ae60")  # -1, 0, 1
ROUND_CMAP = "viridis"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": 100})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the page is HTML


def _round_colors(n: int):
    cmap = _pyplot().get_cmap(ROUND_CMAP)
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _per_round(fig, ax, rounds: list[int], ylabel: str) -> str:
    """A chart with one point per round on the x axis, finished and rendered."""
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _svg(fig)


def f1_chart(rounds: list[dict], final: dict | None) -> str:
    """Macro-F1 per round: OOF (single fold heads), holdout (the fold ensemble), best blend on the holdout."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ks = [m["round"] for m in rounds]
    ax.plot(ks, [m["oof"]["macro_f1"] for m in rounds], "o-", label="OOF (fold heads)")
    holdout = [m["holdout"]["macro_f1"] if m.get("holdout") else None for m in rounds]
    if any(v is not None for v in holdout):
        ax.plot(ks, [np.nan if v is None else v for v in holdout], "s-", label="holdout (fold ensemble)")
        blends = [max(m["holdout_blend"].values()) if m.get("holdout_blend") else np.nan for m in rounds]
        ax.plot(ks, blends, "^--", label="holdout, best co-teacher blend")
    if final and final.get("value") is not None:
        ax.plot([final["round"]], [final["value"]], marker="*", markersize=16, color="#e67e22", linestyle="none",
                label="delivered")
    return _per_round(fig, ax, ks, "macro-F1")


def per_class_chart(rounds: list[dict]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ks = [m["round"] for m in rounds]
    for value, color in zip(LABEL_VALUES, CLASS_COLORS):
        ax.plot(ks, [m["oof"]["f1_per_class"][value] for m in rounds], "o-", color=color, label=f"class {value}")
    return _per_round(fig, ax, ks, "OOF F1")


def pseudo_mix_chart(rounds: list[dict]) -> str:
    """Share of each class among the pseudo-labels of every round >= 1, beside the labeled prior."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    groups = ["labeled prior"] + [f"round {m['round']}\n({m['n_pseudo']:,} posts)" for m in rounds if m["round"]]
    shares = [list(rounds[0]["labeled_prior"])]
    for m in rounds[1:]:
        counts = np.array([m["pseudo_per_class"][v] for v in LABEL_VALUES], dtype=float)
        shares.append((counts / counts.sum()).tolist() if counts.sum() else [0.0, 0.0, 0.0])
    x = np.arange(len(groups))
    width = 0.26
    for c, (value, color) in enumerate(zip(LABEL_VALUES, CLASS_COLORS)):
        ax.bar(x + (c - 1) * width, [s[c] for s in shares], width, color=color, label=f"class {value}")
    ax.set_xticks(x, groups)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    return _svg(fig)


def confidence_chart(run_dir: RunDir, rounds: list[dict]) -> str | None:
    """Histogram of the pool's confidence (max fold-mean probability) per round."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    bins = np.linspace(1 / 3, 1.0, 25)
    drawn = 0
    for m, color in zip(rounds, _round_colors(len(rounds))):
        path = run_dir.round(m["round"]).unmask_preds
        if not path.is_file():
            continue
        confidence = load_npy(path).mean(axis=0).max(axis=1)
        ax.hist(confidence, bins=bins, histtype="step", linewidth=1.6, color=color, label=f"round {m['round']}")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("confidence (max fold-mean probability)")
    ax.set_ylabel("pool posts")
    ax.legend(loc="upper left", fontsize=8)
    return _svg(fig)


def reliability_chart(rounds: list[dict]) -> str:
    """OOF accuracy against mean confidence per confidence bin, per round (the diagonal: calibrated)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":", label="calibrated")
    for m, color in zip(rounds, _round_colors(len(rounds))):
        bins = [b for b in m["oof"].get("calibration", {}).get("reliability", []) if b["rows"]]
        if bins:
            ece = m["oof"]["calibration"].get("ece")
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=color,
                    label=f"round {m['round']}" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.set_xlim(0.3, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence (OOF)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    return _svg(fig)


def confusion_chart(matrix: list[list[int]]) -> str:
    """A confusion matrix (rows: labeled -1/0/1, columns: predicted)."""
    plt = _pyplot()
    matrix = np.array(matrix)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(3), LABEL_VALUES)
    ax.set_yticks(range(3), LABEL_VALUES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("labeled")
    return _svg(fig)


def delivered_confusion(rounds: list[dict], final: dict | None) -> tuple[list[list[int]], str]:
    """The confusion matrix of what is delivered, on the holdout (final.json records it), with its caption;
    for a run without one (or delivered before it was recorded): the delivered round's heads alone."""
    if final and final.get("confusion"):
        unweighted = " (labels before the per-class decision weights)" if decision_weights(final) else ""
        return final["confusion"], (f"Confusion matrix of what is delivered ({describe(final)}) on the "
                                    f"{sum(map(sum, final['confusion']))}-post holdout{unweighted}.")
    m = next((m for m in rounds if final and m["round"] == final.get("round")), rounds[-1])
    where = "holdout" if m.get("holdout") else "oof"
    shown = "their fold ensemble on the holdout" if where == "holdout" else "out-of-fold"
    return m[where]["confusion"], (f"Confusion matrix of round {m['round']}'s heads, {shown} (without the "
                                   f"co-teacher blend).")


def _table(rounds: list[dict]) -> str:
    head = ("round", "human + pseudo", "OOF macro-F1", "OOF accuracy", "holdout macro-F1", "best blend",
            "pseudo -1/0/1", "changed", "trainer", "seconds")
    rows = []
    for m in rounds:
        blend = max(m["holdout_blend"].values()) if m.get("holdout_blend") else None
        trainer = (f"fine-tuned, {m.get('encoder_rows', 0):,} posts encoded" if m.get("student") == "finetune"
                   else "head")
        cells = (m["round"], f"{m['rows_human']:,} + {m['n_pseudo']:,}", f"{m['oof']['macro_f1']:.4f}",
                 f"{m['oof']['accuracy']:.4f}", f"{m['holdout']['macro_f1']:.4f}" if m.get("holdout") else "–",
                 f"{blend:.4f}" if blend is not None else "–",
                 " / ".join(str(m["pseudo_per_class"][v]) for v in LABEL_VALUES) if m["round"] else "–",
                 f"{m['n_changed']:,}" if m["round"] else "–", trainer, f"{m['seconds']['total']:.0f}")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.4em}figure{display:inline-block;vertical-align:top;margin:0 1.5em 1.5em 0}
figcaption{font-size:.9em;color:#555;max-width:640px}table{border-collapse:collapse;font-size:.9em}
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right}.note{color:#555}"""


def render_html(run_dir: str | Path, rounds: list[dict], state_lines: list[str], final: dict | None) -> str:
    """The page: a summary, the round table and the charts (each an inline <svg> in a <figure>)."""
    rd = RunDir(run_dir)
    figures = [
        (f1_chart(rounds, final), "Macro-F1 per round. OOF scores single fold heads on their validation parts; "
                                  "the holdout scores the fold ensemble; the star is the holdout score of what is "
                                  "delivered (by default the rounds' mean blended with the co-teacher), placed at "
                                  "the last round it uses."),
        (per_class_chart(rounds), "Out-of-fold F1 of each class per round."),
    ]
    if len(rounds) > 1:
        figures.append((pseudo_mix_chart(rounds), "Pseudo-labels per class (share, fold mean) against the "
                                                  "labeled prior."))
    confidence = confidence_chart(rd, rounds)
    if confidence:
        figures.append((confidence, "The pool's confidence per round: how sure the fold ensemble is of the "
                                    "posts pseudo-labels are selected from."))
    figures.append((reliability_chart(rounds), "Reliability of the OOF predictions: accuracy against confidence "
                                               "per bin."))
    matrix, caption = delivered_confusion(rounds, final)
    figures.append((confusion_chart(matrix), caption))
    body = "".join(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
                   for svg, caption in figures)
    state = "".join(f"<p class='note'>{html.escape(line)}</p>" for line in state_lines)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>pseudo run "
            f"{html.escape(rd.root.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>pseudo run <code>{html.escape(str(rd.root))}</code></h1>{state}{_table(rounds)}{body}"
            f"</body></html>\n")


def write_html(run_dir: str | Path, rounds: list[dict], state_lines: list[str], final: dict | None,
               out: str | Path) -> int:
    """Write the page to `out` atomically; returns the number of charts."""
    page = render_html(run_dir, rounds, state_lines, final)
    atomic_write_text(Path(out), page)
    return page.count("<figure>")
