"""What a run directory holds, as rich tables or JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..data.posts import LABEL_VALUES
from ..core.errors import PseudoError
from ..rounds.deliver import blends_rounds, choose, chosen_rounds, describe
from ..core.store import RunDir, RunLock, read_json

COLLAPSE_HINT = ("collapsed: the head learned nothing (a class is (almost) never predicted, or macro-F1 is not above "
                 "always predicting the majority); use the default recipe or a better encoder; its pseudo-labels "
                 "are refused (--force selects anyway)")


def load_rounds(run_dir: str | Path) -> tuple[list[dict], str | None]:
    """Metrics of every finished round and the run's stop reason (None if it never ended)."""
    rd = RunDir(run_dir)
    if not rd.exists():
        raise PseudoError(f"{rd.root}: not a run directory (no config.json)")
    rounds = [read_json(rd.round(k).metrics) for k in rd.finished_rounds()]
    stop = rd.status().get("stop_reason")
    return rounds, stop


def run_state(run_dir: str | Path, rounds: list[dict], stop: str | None) -> dict:
    """How far a run got: finished or not, running (its lock is held) or stopped, the rounds asked
    for, and the folds finished in the first unfinished round."""
    rd = RunDir(run_dir)
    saved = rd.saved_config()
    invocation = saved.get("invocation") or {}
    status = rd.status()
    holder = RunLock(rd.root).holder()
    finished = stop is not None and not status.get("running") and holder is None
    planned = invocation.get("rounds")
    current = len(rounds)
    folds = int(invocation.get("folds") or saved.get("config", {}).get("folds") or 0)
    folds_done = sum(rd.fold(current, i).is_done() for i in range(folds)) if not finished else None
    return {"finished": finished, "running": holder is not None, "holder": holder,
            "rounds_finished": current, "rounds_planned": planned,
            "current_round": None if finished else current, "folds": folds, "folds_finished": folds_done,
            "invocation": invocation}


def state_lines(state: dict, resume_command: str | None) -> list[str]:
    """The run's state in words, for unfinished runs (the table says the rest)."""
    if state["finished"]:
        return []
    planned = state["rounds_planned"]
    asked = f" of rounds 0-{planned}" if planned is not None else ""
    where = (f"{state['rounds_finished']} round(s) finished{asked}; round {state['current_round']}: "
             f"{state['folds_finished']} of {state['folds']} folds finished")
    if state["running"]:
        return [f"running ({state['holder']}): {where}"]
    lines = [f"stopped before finishing: {where}"]
    if resume_command:
        lines.append(f"resume with: {resume_command}")
    return lines


def round_summary(m: dict) -> dict:
    """The machine-readable record of one round (the shape `pseudo report --json` prints)."""
    return {
        "round": m["round"],
        "oof_macro_f1": m["oof"]["macro_f1"],
        "oof_f1_per_class": m["oof"]["f1_per_class"],
        "oof_accuracy": m["oof"]["accuracy"],
        "holdout_macro_f1": m["holdout"]["macro_f1"] if m.get("holdout") else None,
        "holdout_blend_macro_f1": m.get("holdout_blend"),
        "leak_free": m["leak_free"],
        "collapsed": m["collapsed"],
        "rows_human": m["rows_human"],
        "n_pseudo": m["n_pseudo"],
        "pseudo_per_class": m["pseudo_per_class"],
        "labeled_prior": dict(zip(LABEL_VALUES, m["labeled_prior"])),
        "n_changed": m["n_changed"],
        "seconds": m["seconds"]["total"],
        "student": m.get("student", "head"),  # "finetune": each fold fine-tuned the encoder
        "encoder_rows": m.get("encoder_rows", 0),  # posts the folds ran the encoder over (fine-tuned students)
        "seconds_per_fold": float(np.mean([f["seconds"] for f in m["folds"]])) if m.get("folds") else None,
    }


def final_choice(run_dir: str | Path, rounds: list[dict]) -> dict | None:
    """What the run delivered (final.json), or what it would deliver from the rounds finished so far."""
    path = RunDir(run_dir).final_path
    if path.is_file():
        return read_json(path)
    if not rounds:
        return None
    saved = RunDir(run_dir).saved_config()
    asked = saved.get("invocation") or {}  # the options of the command that ran it, not only those hashed
    deliver = asked.get("deliver") or saved.get("config", {}).get("deliver", "mean")
    planned, co_teacher = asked.get("rounds"), asked.get("co_teacher", saved.get("config", {}).get("co_teacher", 0.5))
    blended = None if planned is None else blends_rounds(planned, co_teacher)
    return {**choose(rounds, deliver, blended=blended), "written": False}


def report_json(run_dir: str | Path, resume_command: str | None = None) -> dict:
    rounds, stop = load_rounds(run_dir)
    state = run_state(run_dir, rounds, stop)
    final = final_choice(run_dir, rounds)
    return {"run_dir": str(run_dir), "finished": state["finished"], "running": state["running"],
            "holder": state["holder"], "rounds_planned": state["rounds_planned"],
            "folds_finished_in_current_round": state["folds_finished"],
            "resume_command": None if state["finished"] or state["running"] else resume_command,
            "rounds": [round_summary(m) for m in rounds], "stop_reason": stop,
            "final": final if final and final.get("written", True) else None,
            "final_so_far": final if final and not final.get("written", True) else None}


def _f1(value: float | None, leak_free: bool) -> Text:
    if value is None:
        return Text("–", style="dim")
    return Text(f"{value:.4f}" + ("" if leak_free else " *"), style="bold" if leak_free else "yellow")


FIELDS = ("human+pseudo", "pseudo -1/0/1", "OOF mF1", "OOF F1 -1/0/1", "holdout mF1", "holdout blend (w)",
          "trainer", "time (per fold)")  # the table's; accuracy, changed labels, posts encoded: --json, --html


def round_cells(m: dict) -> list:
    """One round's cells, in the order of FIELDS."""
    s = round_summary(m)
    mix = "/".join(str(n) for n in s["pseudo_per_class"].values()) if m["round"] else "–"
    per_class = "/".join(f"{v:.3f}" for v in s["oof_f1_per_class"].values())
    trainer = Text("fine-tuned" if s["student"] == "finetune" else "head")
    if s["collapsed"]:
        trainer.append(", collapsed", style="bold red")
    return [f"{s['rows_human']}+{s['n_pseudo']}", mix, _f1(s["oof_macro_f1"], s["leak_free"]["oof"]), per_class,
            _f1(s["holdout_macro_f1"], True), _best_blend(s["holdout_blend_macro_f1"]), trainer,
            f"{s['seconds']:.0f}s" + (f" ({s['seconds_per_fold']:.0f}s)" if s["seconds_per_fold"] else "")]


def _table_width(columns: list[list]) -> int:
    """What rich needs for these columns (each a header and its cells) unwrapped: cells, a space either
    side, and a rule between and around them."""
    return sum(max(Text(str(c)).cell_len if not isinstance(c, Text) else c.cell_len for c in col) + 3
               for col in columns) + 1


def rounds_table(rounds: list[dict], title: str = "rounds", width: int | None = None):
    """One row per round; where that would not fit `width` columns (a log, a laptop terminal), one column
    per round instead, as many rounds side by side as fit. No cell is ever cut or wrapped."""
    prior = " / ".join(f"{p:.2f}" for p in rounds[0]["labeled_prior"]) if rounds else "–"
    caption = f"labeled prior -1 / 0 / 1: {prior}"
    cells = [round_cells(m) for m in rounds]
    by_column = [["round", *(str(m["round"]) for m in rounds)]] + [[f, *(c[i] for c in cells)]
                                                                 for i, f in enumerate(FIELDS)]
    if width is None or _table_width(by_column) <= width:
        table = _table(title, caption, ["round", *FIELDS])
        for m, row in zip(rounds, cells):
            table.add_row(str(m["round"]), *row)
        return table
    label = max(len(f) for f in FIELDS) + 3
    widths = [_table_width([[f"round {m['round']}", *c]]) - 1 for m, c in zip(rounds, cells)]
    chunks, chunk, used = [], [], label + 1
    for i, w in enumerate(widths):
        if chunk and used + w > width:
            chunks.append(chunk)
            chunk, used = [], label + 1
        chunk.append(i)
        used += w
    chunks.append(chunk)
    tables = []
    for n, chunk in enumerate(chunks):
        table = _table(title if n == 0 else None, caption if n == len(chunks) - 1 else None,
                       ["", *(f"round {rounds[i]['round']}" for i in chunk)])
        for j, field in enumerate(FIELDS):
            table.add_row(field, *(cells[i][j] for i in chunk))
        tables.append(table)
    return Group(*tables)


def _table(title: str | None, caption: str | None, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for n, column in enumerate(columns):
        table.add_column(column, justify="left" if n == 0 and not column or column == "trainer" else "right",
                         no_wrap=True)
    return table


def best_blend(by_weight: dict | None) -> tuple[float, float] | None:
    """The co-teacher share that scores best on the holdout (ties: the one nearest an even blend), and
    its score."""
    if not by_weight:
        return None
    weight, value = max(by_weight.items(), key=lambda item: (item[1], -abs(float(item[0]) - 0.5)))
    return float(weight), value


def _best_blend(by_weight: dict | None) -> Text:
    best = best_blend(by_weight)
    if best is None:
        return Text("–", style="dim")
    return Text(f"{best[1]:.4f} ({best[0]:.2f})", style="bold")


def final_line(choice: dict | None, rounds: list[dict]) -> Text:
    """What the run delivers (submission.csv at the run's top), by how much it beats round 0, and its
    per-class decision weights with their cross-fitted estimate (--class-weights auto)."""
    line = _final_line(choice, rounds)
    weights = (choice or {}).get("class_weights")
    if weights:
        star = "" if weights["leak_free"] else " (OOF rows not leak-free)"
        line.append(f"; labels argmax(p · w), w -1/0/1 {'/'.join(f'{w:.2f}' for w in weights['weights'])}: "
                    f"macro-F1 {weights['estimate']:.4f} cross-fitted on {weights['rows']:,} labeled posts against "
                    f"{weights['unweighted']:.4f} unweighted{star}")
    return line


def _final_line(choice: dict | None, rounds: list[dict]) -> Text:
    if choice is None:
        return Text("not delivered yet", style="yellow")
    label = "final output" if choice.get("written", True) else "not delivered yet; so far the rule picks"
    if choice["metric"] is None and chosen_rounds(choice) != [0]:  # the rounds' mean, without an estimate
        return Text(f"{label}: {choice['reason']}", style="bold yellow")
    if choice["metric"] is None:
        head = f"{label}: round 0's head (OOF macro-F1 {rounds[0]['oof']['macro_f1']:.4f})"
        oof = "" if choice.get("oof_gain") is None else \
            f"; best pseudo round's leak-free OOF macro-F1 {100 * choice['oof_gain']:+.1f} points"
        return Text(head + (f" — {choice['reason']}{oof}" if choice.get("reason") else ""), style="bold yellow")
    what = describe(choice)
    interval = choice.get("interval")  # runs delivered before the interval was recorded have none
    text = f"{label}: {what} — holdout macro-F1 {choice['value']:.4f}"
    if interval:
        text += f" ({100 * interval['level']:.0f}% interval {interval['value'][0]:.4f}–{interval['value'][1]:.4f})"
    if choice.get("gain") is None:
        return Text(text, style="bold")
    text += f" vs {choice['round0']:.4f} for round 0's head ({100 * choice['gain']:+.1f} points"
    if not interval or (chosen_rounds(choice) == [0] and choice["weight"] == 0):  # no interval, or round 0 itself
        return Text(text + ")", style="bold green" if choice["gain"] > 0 else "bold yellow")
    low, high = (100 * g for g in interval["gain"])
    text += (f", interval {low:+.1f} to {high:+.1f} over {interval['draws']:,} bootstrap draws of the "
             f"{interval['rows']:,} holdout posts)")
    if interval["gain_covers_zero"]:
        text += ": the interval covers zero, so the gain may be chance"
    return Text(text, style="bold green" if low > 0 else "bold yellow")


def footer_lines(rounds: list[dict], stop: str | None, choice: dict | None = None,
                 state: list[str] | None = None) -> list[Text]:
    """The lines under the round table; `state`: the run's state in words when it is not finished
    (`state_lines`), else the stop reason or the hint to resume is printed."""
    lines = []
    if any(not round_summary(m)["leak_free"]["oof"] for m in rounds):
        lines.append(Text("* not leak-free: pseudo-labels averaged over all folds carry validation labels into "
                          "training (use --pseudo-source fold or --holdout for a leak-free number)", style="yellow"))
    if any(m["collapsed"] for m in rounds):
        lines.append(Text(COLLAPSE_HINT, style="red"))
    if rounds:
        lines.append(final_line(choice, rounds))
    if state:
        lines += [Text(line, style="yellow") for line in state]
    elif stop:
        lines.append(Text(f"stop reason: {stop}", style="bold"))
    else:
        lines.append(Text("not finished (interrupted or still running): re-run the same `pseudo run` command "
                          "to resume", style="yellow"))
    return lines
