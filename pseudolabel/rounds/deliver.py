"""What a run hands the user (`--deliver`): the mean of its rounds, or the round and blend the holdout picks.

`mean` (the default) makes no choice: it delivers the mean of every usable (not collapsed) round's fold
ensemble, blended evenly (MEAN_WEIGHT) with the co-teacher in a run of pseudo-label rounds (--rounds >= 1,
even one that stopped after round 0) unless --co-teacher 0; a run of round 0 alone (--rounds 0) delivers
round 0's heads, the recipe's output. Replayed on finished runs (benchmarks/delivery_rules.py,
results/delivered-output.md) it beat round 0 on every seed and the holdout's choice on average. The labeled
holdout (`--holdout`, on by default when --rounds >= 1) only estimates it, so that estimate carries no optimism
from a choice; without a holdout there is no estimate of it.

`auto`, `head` and `blend` choose on the holdout. The submission is the fold ensemble's mean prediction
(optionally blended with the co-teacher), so candidates are compared on what scores exactly that on labeled
posts no fold model trained on. A round's OOF macro-F1 scores single fold heads, and its gains need not carry
over to the ensemble (benchmarks/scarce_labels.py), so without a holdout round 0's head is delivered.
Candidates: every non-collapsed round's head ensemble (weight 0) and, for `blend`/`auto`, its blend
(1 - w) * head + w * co-teacher for w in BLEND_WEIGHTS. The best holdout macro-F1 wins; ties go to the
earlier round, then to the weight nearer an even blend.

A delivered blend scores the test file with the co-teacher refit on every labeled row (the holdout scores its
fold models). How sure the holdout estimate is: a percentile bootstrap over the holdout posts
(INTERVAL_DRAWS resamples with replacement, seeded), each resample scoring the delivered output and round 0's
head on the same posts, gives the interval of the delivered macro-F1 and of its gain over round 0
(`holdout_interval`).
"""

from __future__ import annotations

import numpy as np

from ..core.constants import HOLDOUT
from ..core.errors import PseudoError
from ..data.metrics import resampled_macro_f1, scores
from ..core.store import RunDir, atomic_write_csv, atomic_write_json, atomic_write_npy, load_npy
from .class_weights import weighted_labels

DELIVER = ("mean", "auto", "head", "blend")
BLEND_WEIGHTS = (0.25, 0.5, 0.75)
MEAN_WEIGHT = 0.5  # the co-teacher's share in the rounds' mean (`mean`)
INTERVAL_DRAWS = 1000  # bootstrap resamples of the holdout behind the delivered estimate's interval
INTERVAL_LEVEL = 0.95

NO_HOLDOUT = ("no labeled holdout to score the fold ensemble on (OOF scores single fold heads, and their gains "
              "need not carry over); --holdout 0.15 lets later rounds and the blend compete")


def check_deliver(deliver: str) -> str:
    if deliver not in DELIVER:
        raise PseudoError(f"deliver must be one of {', '.join(DELIVER)}, got {deliver!r}")
    return deliver


def blend_scores(labels: np.ndarray, head: np.ndarray, co_teacher: np.ndarray,
                 weights=BLEND_WEIGHTS) -> dict[str, float]:
    """Macro-F1 of (1 - w) * head + w * co-teacher per weight; both (folds, rows, 3), averaged over folds."""
    head, co_teacher = np.asarray(head).mean(axis=0), np.asarray(co_teacher).mean(axis=0)
    if head.shape != co_teacher.shape or len(head) != len(labels):
        raise PseudoError(f"blend scores need predictions of one shape for {len(labels)} rows, got {head.shape} "
                          f"and {co_teacher.shape}")
    return {str(w): scores(labels, blend(head, co_teacher, w))["macro_f1"] for w in weights}


def blend(head: np.ndarray, co_teacher: np.ndarray, weight: float) -> np.ndarray:
    """(1 - w) * head + w * co-teacher, both (rows, 3)."""
    return (1.0 - weight) * head + weight * co_teacher


def usable_rounds(rounds: list[dict]) -> list[int]:
    """The rounds a delivered output may use: those that did not collapse (all, if every one did)."""
    return [m["round"] for m in rounds if not m["collapsed"]] or [m["round"] for m in rounds]


def mean_weight(rounds: list[dict], blended: bool | None = None) -> float:
    """The co-teacher's share in the rounds' mean: MEAN_WEIGHT where it is `blended` (`blends_rounds`; None:
    where a pseudo-label round finished), else 0."""
    blended = len(rounds) > 1 if blended is None else blended
    return MEAN_WEIGHT if blended else 0.0


def blends_rounds(rounds: int, co_teacher: float) -> bool:
    """Whether a run's rounds' mean is blended with the co-teacher: in a run asked for pseudo-label rounds
    (--rounds >= 1, even one that stopped after round 0) with a co-teacher (--co-teacher > 0)."""
    return rounds >= 1 and co_teacher > 0


def mean_scores(labels: np.ndarray, holdout_preds: list[np.ndarray], co_teacher: np.ndarray | None,
                rounds: list[int]) -> dict:
    """Holdout macro-F1 of the rounds' mean (each (folds, rows, 3), fold-averaged, then averaged over the
    rounds), alone and blended with the co-teacher at MEAN_WEIGHT: a round record's `holdout_mean`."""
    mean = rounds_mean(holdout_preds)
    out = {"0.0": scores(labels, mean)["macro_f1"]}
    if co_teacher is not None:
        blended = blend(mean, np.asarray(co_teacher).mean(axis=0), MEAN_WEIGHT)
        out[str(MEAN_WEIGHT)] = scores(labels, blended)["macro_f1"]
    return {"rounds": [int(k) for k in rounds], "macro_f1": out}


def rounds_mean(preds: list[np.ndarray]) -> np.ndarray:
    """(rows, 3): each round's fold mean ((folds, rows, 3)), averaged over the rounds (one round: its fold mean)."""
    return np.mean([np.asarray(p).mean(axis=0) for p in preds], axis=0)


def describe(choice: dict) -> str:
    """What a choice delivers, in words: "round 1's head", "round 0 blended with the co-teacher at 0.25", "the
    mean of rounds 0, 1, 2 blended evenly with the co-teacher"."""
    rounds = choice.get("rounds") or [choice["round"]]
    what = f"round {rounds[0]}" if len(rounds) == 1 else f"the mean of rounds {', '.join(map(str, rounds))}"
    if choice["weight"] <= 0:
        return what + ("'s head" if len(rounds) == 1 else "")
    if choice["weight"] == MEAN_WEIGHT and len(rounds) > 1:
        return what + " blended evenly with the co-teacher"
    return what + f" blended with the co-teacher at {choice['weight']:.2f}"


def candidates(rounds: list[dict], deliver: str = "auto") -> list[dict]:
    """(round, weight, holdout macro-F1) of every output the rule may deliver."""
    check_deliver(deliver)
    usable = [m for m in rounds if m["round"] in usable_rounds(rounds)]
    out = []
    for m in usable:
        if not m.get("holdout"):
            continue
        if deliver in ("auto", "head"):
            out.append({"round": m["round"], "weight": 0.0, "value": m["holdout"]["macro_f1"]})
        if deliver in ("auto", "blend"):
            out += [{"round": m["round"], "weight": float(w), "value": v}
                    for w, v in (m.get("holdout_blend") or {}).items()]
    return out


def choose(rounds: list[dict], deliver: str = "mean", scored: dict | None = None,
           blended: bool | None = None) -> dict:
    """Which output a run delivers (`rounds`: the rounds whose fold ensembles it averages), its holdout score,
    round 0's head on the same rows, and why. `scored`: the rounds' mean's holdout scores (`mean_scores`),
    else the last round's record of them; `blended`: the mean is blended with the co-teacher (`blends_rounds`)."""
    if not rounds:
        raise PseudoError("no finished round to deliver")
    oof = [m["oof"]["macro_f1"] for m in rounds]
    oof_gain = (max(oof[1:]) - oof[0]) if len(rounds) > 1 and all(m["leak_free"]["oof"] for m in rounds) else None
    round0 = rounds[0]["holdout"]["macro_f1"] if rounds[0].get("holdout") else None
    if check_deliver(deliver) == "mean":
        return _mean_choice(rounds, oof_gain, round0, scored or rounds[-1].get("holdout_mean"), blended)
    pool = candidates(rounds, deliver)
    if not pool:
        reason = NO_HOLDOUT if (len(rounds) > 1 or deliver == "blend") else None
        return {"round": 0, "rounds": [0], "weight": 0.0, "output": "head", "deliver": deliver, "metric": None,
                "value": None, "round0": None, "gain": None, "oof_gain": oof_gain, "candidates": [], "reason": reason}
    best = max(pool, key=lambda c: (c["value"], -c["round"], -abs(c["weight"] - 0.5)))
    if best["weight"] > 0:
        why = (f"round {best['round']} blended with the co-teacher at {best['weight']:.2f} scores best on the "
               f"holdout among {len(pool)} candidates")
    else:
        why = f"round {best['round']}'s head scores best on the holdout among {len(pool)} candidates"
    return {"round": best["round"], "rounds": [best["round"]], "weight": best["weight"],
            "output": "blend" if best["weight"] > 0 else "head",
            "deliver": deliver, "metric": "holdout", "value": best["value"], "round0": round0,
            "gain": None if round0 is None else best["value"] - round0, "oof_gain": oof_gain, "candidates": pool,
            "reason": why + " (chosen on the same rows: the estimate is optimistic by that choice)"}


def _mean_choice(rounds: list[dict], oof_gain, round0, scored: dict | None, blended: bool | None) -> dict:
    """`mean`: every usable round's fold ensemble averaged, blended at `mean_weight`; scored, not chosen."""
    usable, weight = usable_rounds(rounds), mean_weight(rounds, blended)
    value = None
    if scored is not None and scored.get("rounds") == usable:
        value = scored["macro_f1"].get(str(weight))
    choice = {"round": usable[-1], "rounds": usable, "weight": weight, "output": "blend" if weight > 0 else "head",
              "deliver": "mean", "metric": None if value is None else "holdout", "value": value,
              "round0": None if value is None else round0, "gain": None if value is None or round0 is None
              else value - round0, "oof_gain": oof_gain, "candidates": []}
    if value is None:
        why = "no labeled holdout to estimate it on (--holdout 0.15 gives one)" if round0 is None else \
            "its holdout score was not recorded (a run made before it was)"
    else:
        why = "delivered without a choice, so the holdout estimate carries no optimism from one"
    # round 0 alone without a holdout: the recipe's output, as --deliver auto delivers it (no reason to give)
    choice["reason"] = None if value is None and usable == [0] and weight == 0 else f"{describe(choice)}: {why}"
    return choice


def delivered_probs(choice: dict, head_test: np.ndarray | list[np.ndarray],
                    co_teacher_test: np.ndarray | None) -> np.ndarray:
    """(N_test, 3): the chosen rounds' fold-mean test predictions (a (folds, N, 3) array per round, or one
    array of one round), averaged over the rounds and blended as chosen."""
    head = rounds_mean(head_test if isinstance(head_test, list) else [head_test])
    if choice["weight"] <= 0:
        return head
    if co_teacher_test is None or co_teacher_test.shape != head.shape:
        raise PseudoError("the delivered blend needs the co-teacher's test predictions of the head's shape")
    return blend(head, co_teacher_test, choice["weight"]).astype(np.float32)


def holdout_interval(labels: np.ndarray, delivered: np.ndarray, round0: np.ndarray, draws: int = INTERVAL_DRAWS,
                     seed: int = 0) -> dict:
    """The INTERVAL_LEVEL percentile-bootstrap interval of the delivered output's macro-F1 on the holdout and
    of its gain over round 0's head (both (rows, 3) probabilities), over `draws` resamples of the rows."""
    labels = np.asarray(labels)
    predicted, predicted0 = np.asarray(delivered).argmax(axis=1), np.asarray(round0).argmax(axis=1)
    rng = np.random.default_rng(seed)
    values, gains = [], []
    for start in range(0, draws, 100):  # 100 resamples at a time: memory stays small on a large holdout
        rows = rng.integers(0, len(labels), size=(min(100, draws - start), len(labels)))
        value = resampled_macro_f1(labels, predicted, rows)
        values.append(value)
        gains.append(value - resampled_macro_f1(labels, predicted0, rows))
    tails = [50 * (1 - INTERVAL_LEVEL), 50 * (1 + INTERVAL_LEVEL)]
    value_range = np.percentile(np.concatenate(values), tails)
    gain_range = np.percentile(np.concatenate(gains), tails)
    return {"level": INTERVAL_LEVEL, "draws": draws, "seed": seed, "rows": int(len(labels)),
            "value": [float(v) for v in value_range], "gain": [float(g) for g in gain_range],
            "gain_covers_zero": bool(gain_range[0] <= 0.0 <= gain_range[1])}


def delivered_holdout(run_dir: RunDir, choice: dict, labels: np.ndarray,
                      co_teacher_holdout: np.ndarray | None) -> dict | None:
    """What `choice` delivers on the holdout (None where nothing was chosen on a holdout): the interval of its
    macro-F1 and of its gain over round 0's head (`holdout_interval`), and its confusion matrix."""
    if choice["metric"] != "holdout":
        return None
    head = rounds_mean([load_npy(run_dir.round(k).holdout_preds) for k in chosen_rounds(choice)])
    if choice["weight"] > 0:
        head = blend(head, np.asarray(co_teacher_holdout).mean(axis=0), choice["weight"])
    round0 = load_npy(run_dir.round(0).holdout_preds).mean(axis=0)
    held = np.asarray(labels)[load_npy(run_dir.round(0).folds) == HOLDOUT]
    return {"interval": holdout_interval(held, head, round0), "confusion": scores(held, head)["confusion"]}


def estimation_probs(run_dir: RunDir, choice: dict, co_teacher: dict | None) -> np.ndarray:
    """(N_labeled, 3): the delivered output on every labeled post no model trained on it: the holdout by the
    chosen rounds' fold ensembles, the other posts by their OOF fold models, averaged over the rounds and
    blended with the co-teacher's (`co_teacher`: its "oof" and "holdout") as delivered."""
    held = load_npy(run_dir.round(0).folds) == HOLDOUT
    rows = []
    for k in chosen_rounds(choice):
        files = run_dir.round(k)
        oof = np.array(load_npy(files.oof_preds), np.float32)
        if held.any():
            oof[held] = load_npy(files.holdout_preds).mean(axis=0)
        rows.append(oof)
    mean = np.mean(rows, axis=0)
    if choice["weight"] <= 0:
        return mean
    co = np.array(co_teacher["oof"], np.float32)
    if held.any():
        co[held] = np.asarray(co_teacher["holdout"]).mean(axis=0)
    return blend(mean, co, choice["weight"])


def chosen_rounds(choice: dict) -> list[int]:
    """The rounds a choice averages (a final.json written before several could be: its one round)."""
    return [int(k) for k in choice.get("rounds") or [choice["round"]]]


def submission_rows(ids: list[str], probs: np.ndarray, weights=None):
    """(id, label -1/0/1) rows of a submission file; `weights`: per-class decision weights (class_weights.py)."""
    return zip(ids, (weighted_labels(probs, weights) - 1).tolist())


def decision_weights(choice: dict) -> list[float] | None:
    """The per-class decision weights a choice delivers with (None: plain argmax)."""
    return (choice.get("class_weights") or {}).get("weights")


def write_final(run_dir: RunDir, choice: dict, test_ids: list[str] | None,
                co_teacher_test: np.ndarray | None, raw: bool = False) -> dict:
    """Write what the run delivers: final.json, and with a test file the top submission.csv (its labels weighted
    per class where the choice has `class_weights`) and its probabilities (final_test_preds.npy, unweighted); a
    delivered blend of one round also goes to round_k/submission_blend.csv (unweighted)."""
    chosen = [run_dir.round(k) for k in chosen_rounds(choice)]
    if test_ids is not None and all(files.test_preds.is_file() for files in chosen):
        probs = delivered_probs(choice, [load_npy(files.test_preds) for files in chosen], co_teacher_test)
        if choice["weight"] > 0 and len(chosen) == 1:
            atomic_write_csv(chosen[0].submission_blend, ["id", "y"], submission_rows(test_ids, probs), raw=raw)
        atomic_write_npy(run_dir.final_test_preds, probs)
        atomic_write_csv(run_dir.submission, ["id", "y"], submission_rows(test_ids, probs, decision_weights(choice)),
                         raw=raw)
        choice["submission"] = str(run_dir.submission)
    atomic_write_json(run_dir.final_path, choice)
    return choice
