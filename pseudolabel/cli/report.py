"""What a run directory holds, as rich tables or JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table
from rich.text import Text

from ..data.posts import LABEL_VALUES
from ..core.errors import PseudoError
from ..rounds.deliver import choose
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
    return {**choose(rounds, saved.get("config", {}).get("deliver", "auto")), "written": False}


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


def rounds_table(rounds: list[dict], title: str = "rounds") -> Table:
    prior = " / ".join(f"{p:.2f}" for p in rounds[0]["labeled_prior"]) if rounds else "–"
    table = Table(title=title, title_justify="left", caption=f"labeled prior -1 / 0 / 1: {prior}",
                  caption_justify="left")
    for column in ("round", "human+pseudo", "pseudo -1/0/1", "changed", "OOF mF1", "OOF F1 -1/0/1", "OOF acc",
                   "holdout mF1", "holdout blend (w)", "student", "status", "time (per fold)"):
        table.add_column(column, justify="left" if column == "status" else "right")
    for m in rounds:
        s = round_summary(m)
        mix = "/".join(str(n) for n in s["pseudo_per_class"].values()) if m["round"] else "–"
        per_class = "/".join(f"{v:.3f}" for v in s["oof_f1_per_class"].values())
        status = Text("collapsed", style="bold red") if s["collapsed"] else Text("ok", style="green")
        table.add_row(str(m["round"]), f"{s['rows_human']}+{s['n_pseudo']}", mix,
                      str(s["n_changed"]) if m["round"] else "–", _f1(s["oof_macro_f1"], s["leak_free"]["oof"]),
                      per_class, f"{s['oof_accuracy']:.4f}", _f1(s["holdout_macro_f1"], True),
                      _best_blend(s["holdout_blend_macro_f1"]), _student(s), status,
                      f"{s['seconds']:.0f}s" + (f" ({s['seconds_per_fold']:.0f}s)" if s["seconds_per_fold"] else ""))
    return table


def _student(s: dict) -> str:
    """What trained the round's folds; a fine-tuned one ran the encoder again over this many posts."""
    if s["student"] != "finetune":
        return "head"
    return f"fine-tuned, {s['encoder_rows']:,} posts encoded"


def _best_blend(by_weight: dict | None) -> Text:
    if not by_weight:
        return Text("–", style="dim")
    weight, value = max(by_weight.items(), key=lambda item: (item[1], -abs(float(item[0]) - 0.5)))
    return Text(f"{value:.4f} ({float(weight):.2f})", style="bold")


def final_line(choice: dict | None, rounds: list[dict]) -> Text:
    """What the run delivers (submission.csv at the run's top) and by how much it beats round 0."""
    if choice is None:
        return Text("not delivered yet", style="yellow")
    if choice["metric"] is None:
        label = "final output" if choice.get("written", True) else "not delivered yet; so far the rule picks"
        head = f"{label}: round 0's head (OOF macro-F1 {rounds[0]['oof']['macro_f1']:.4f})"
        oof = "" if choice.get("oof_gain") is None else \
            f"; best pseudo round's leak-free OOF macro-F1 {100 * choice['oof_gain']:+.1f} points"
        return Text(head + (f" — {choice['reason']}{oof}" if choice.get("reason") else ""), style="bold yellow")
    what = f"round {choice['round']}" + (f" blended with the co-teacher at {choice['weight']:.2f}"
                                         if choice["weight"] > 0 else "'s head")
    label = "final output" if choice.get("written", True) else "not delivered yet; so far the rule picks"
    text = f"{label}: {what} — holdout macro-F1 {choice['value']:.4f}"
    if choice.get("gain") is None:
        return Text(text, style="bold")
    text += f" vs {choice['round0']:.4f} for round 0's head ({100 * choice['gain']:+.1f} points)"
    return Text(text, style="bold green" if choice["gain"] > 0 else "bold yellow")


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
