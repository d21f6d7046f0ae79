"""Replay delivery rules on finished benchmark runs: what each rule would have delivered, scored on the
evaluation split.

A run delivers, by default, the mean of its usable rounds' fold ensembles blended evenly with the co-teacher;
`--deliver auto` delivers the round and co-teacher blend that score best on its labeled holdout
(pseudolabel/rounds/deliver.py). With scarce labels that holdout is ~100 posts, and the choice among eight
candidates is mostly noise. This script scores, on the run's evaluation split (whose labels the run never
saw), what these rules deliver (the co-teacher's share of the test rows: the run's refit, as delivered):

- holdout (--deliver auto): `deliver.choose` on the run's own round records;
- holdout + OOF: every candidate scored on all labeled rows, the holdout by the fold ensemble and the other
  rows by the fold model that did not train on them (6-7 times the rows; single fold models, not ensembles);
- last round, even blend: no choice, the last usable round blended 0.5 with the co-teacher;
- rounds' mean, even blend (the default): no choice, the mean of the usable rounds' ensembles blended 0.5
  (`deliver.choose` with `--deliver mean`: what a default run delivers);
- best on evaluation: the candidate that scores best on the evaluation split (a ceiling no rule can know);
- holdout, per-class weights: the holdout's choice, its label argmax(p * w) with w = (w_-1, 1, w_1) searched
  on a grid (0.5 to 2, 13 steps each) for the best macro-F1 on all labeled rows scored as in "holdout + OOF"
  (the competition teams' per-class weights; a new output, so no candidate bounds it);
- rounds' mean, even blend, per-class weights: the same weights searched for the rounds' mean blend (what
  `--class-weights auto` delivers: `class_weights.search` on the same rows).

The runs are `benchmarks/scarce_labels.py` variant folders (`<work>/seed<N>/<variant>`): the seed folder holds
eval.csv and labeled.csv, whose ids are rows of --train. Nothing is trained or written. `--through-round K`
replays each run as if it had stopped after round K (its later rounds ignored; a run that stopped earlier, as
one whose round 0 collapsed, as it is), so runs of different lengths compare round for round.

    python benchmarks/delivery_rules.py runs/.scarce-student/seed*/default__fine-tuned_student
    python benchmarks/delivery_rules.py --through-round 1 runs/.budget/seed?/default runs/.budget/seed?/uncertainty
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pseudolabel.core.constants import HOLDOUT  # noqa: E402
from pseudolabel.data.posts import load_labeled, load_unlabeled  # noqa: E402
from pseudolabel.rounds.class_weights import search, weighted_labels  # noqa: E402
from pseudolabel.rounds.deliver import BLEND_WEIGHTS, choose, delivered_probs  # noqa: E402
from pseudolabel.data.metrics import macro_f1_rows  # noqa: E402
from pseudolabel.data.metrics import scores  # noqa: E402
from pseudolabel.core.store import RunDir, load_npy, read_json  # noqa: E402

WEIGHTS = (0.0, *BLEND_WEIGHTS)
RULES = ("holdout (--deliver auto)", "holdout + OOF", "last round, even blend", "rounds' mean, even blend (the default)",
         "best on evaluation", "holdout, per-class weights", "rounds' mean, even blend, per-class weights")


def fold_mean(array: np.ndarray) -> np.ndarray:
    return array.mean(axis=0) if array.ndim == 3 else array


def weighted_f1(labels: np.ndarray, probs: np.ndarray, weights) -> float:
    """Macro-F1 of the labels argmax(probs * weights), as a run with --class-weights auto labels its posts."""
    return float(macro_f1_rows(np.asarray(labels)[None], weighted_labels(probs, weights)[None])[0])


def replay(run: Path, truth: dict[str, int], through: int | None = None) -> dict[str, float]:
    """Evaluation macro-F1 of what each rule delivers for one run (its rounds up to `through`: all if None)."""
    run_dir = RunDir(run)
    eval_ids = load_unlabeled(str(run.parent / "eval.csv"), limit=None).ids
    labeled = load_labeled(str(run.parent / "labeled.csv"))
    missing = [i for i in eval_ids if i not in truth]
    if missing:
        raise SystemExit(f"{run.parent / 'eval.csv'}: id {missing[0]} is not a row of --train")
    y_eval = np.array([truth[i] for i in eval_ids])
    finished = [k for k in run_dir.finished_rounds() if through is None or k <= through]
    rounds = [read_json(run_dir.round(k).metrics) for k in finished]
    usable = [m["round"] for m in rounds if not m["collapsed"]] or [m["round"] for m in rounds]
    folds = load_npy(run_dir.round(0).folds)
    held = folds == HOLDOUT
    co = run_dir.co_teacher
    if not co.preds("test").is_file():
        raise SystemExit(f"{run}: no co-teacher predictions of the evaluation split (a run with --rounds 0 or "
                         f"--co-teacher 0 has no blend to replay)")
    co_test, co_held, co_oof = (fold_mean(load_npy(co.preds(n))) for n in ("test", "holdout", "oof"))
    test, everywhere = {}, {}
    for k in usable:
        files = run_dir.round(k)
        test[k] = fold_mean(load_npy(files.test_preds))
        rows = load_npy(files.oof_preds).copy()
        rows[held] = fold_mean(load_npy(files.holdout_preds))
        everywhere[k] = rows
    co_rows = co_oof.copy()
    co_rows[held] = co_held
    candidates = [(k, w) for k in usable for w in WEIGHTS]
    on_eval = {(k, w): scores(y_eval, (1 - w) * test[k] + w * co_test)["macro_f1"] for k, w in candidates}
    on_all = {(k, w): scores(labeled.labels, (1 - w) * everywhere[k] + w * co_rows)["macro_f1"] for k, w in candidates}
    today = choose(rounds, "auto")
    default = choose(rounds, "mean", blended=True)
    pooled = max(candidates, key=lambda c: (on_all[c], -c[0], -abs(c[1] - 0.5)))  # deliver.py's tie order
    mean_test = np.mean([test[k] for k in usable], axis=0)
    k, w = today["round"], today["weight"]
    weights = search(labeled.labels, (1 - w) * everywhere[k] + w * co_rows)
    mean_rows = 0.5 * np.mean([everywhere[r] for r in usable], axis=0) + 0.5 * co_rows
    mean_weights = search(labeled.labels, mean_rows)
    return {RULES[0]: on_eval[(k, w)], RULES[1]: on_eval[pooled], RULES[2]: on_eval[(usable[-1], 0.5)],
            RULES[3]: scores(y_eval, delivered_probs(default, [load_npy(run_dir.round(r).test_preds)
                                                        for r in default["rounds"]], co_test))["macro_f1"],
            RULES[4]: max(on_eval.values()),
            RULES[5]: weighted_f1(y_eval, (1 - w) * test[k] + w * co_test, weights),
            RULES[6]: weighted_f1(y_eval, 0.5 * mean_test + 0.5 * co_test, mean_weights)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished variant run folders of benchmarks/scarce_labels.py")
    parser.add_argument("--train", default="../shared/data/smp_virus_train.labeled.csv",
                        help="the labeled file the benchmark split (its ids label the evaluation split)")
    parser.add_argument("--through-round", type=int, default=None, metavar="K",
                        help="replay each run as if it had stopped after round K (default: all its finished rounds)")
    args = parser.parse_args()
    source = load_labeled(args.train)
    truth = dict(zip(source.ids, source.labels.tolist()))
    groups: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for run in map(Path, args.runs):
        if not (run / "final.json").is_file():
            raise SystemExit(f"{run}: not a finished run (no final.json)")
        groups[run.name].append((run.parent.name, replay(run, truth, args.through_round)))
    for variant, results in groups.items():
        seeds = [seed for seed, _ in results]
        upto = "" if args.through_round is None else f" (rounds up to {args.through_round})"
        print(f"\n{variant}{upto}: evaluation macro-F1 of the delivered output, per {', '.join(seeds)}")
        print("| rule | mean | " + " | ".join(seeds) + " |")
        print("|---|---|" + "---|" * len(seeds))
        for rule in RULES:
            values = [r[rule] for _, r in results]
            print(f"| {rule} | {np.mean(values):.4f} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


if __name__ == "__main__":
    main()
