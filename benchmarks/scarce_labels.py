"""Scarce labels: does pseudo-labeling help when labels are few, and does `pseudo` ever deliver worse?

    python benchmarks/scarce_labels.py                          # shared train set, 3 seeds, all variants
    python benchmarks/scarce_labels.py --rows 400 --max-len 24 --epochs 2 --seeds 0 --folds 3   # tiny

For each seed: a stratified 20% of the shared train set is set aside as the evaluation split; of the
rest, a stratified 10% keeps its labels and 90% becomes the unlabeled pool (its labels are used only
to measure pseudo-label precision). Every variant is a real `pseudo` run (round 0, then --rounds
pseudo-label rounds) with the evaluation split as its test file, so the macro-F1 of each round's
test predictions is a score no round trained or selected on. The anchor: sklearn's
SelfTrainingClassifier on char 1-3-gram TF-IDF + logistic regression, on the same splits.
Prints per seed, variant and round: evaluation macro-F1, pseudo-label count, precision and class mix,
and the round the run delivered; then mean and spread over seeds, and seed-by-seed differences
between the fine-tuned student, the frozen head on the same pseudo-labels and fine-tuning alone.
Not part of the test suite.

With all labels (every non-evaluation row labeled) and a pool from the shared unlabeled file:

    python benchmarks/scarce_labels.py --labeled-share 1 --pool-file ../shared/data/covid_weibo_200k.unlabeled.csv \
        --pool-rows 20000 --rounds 1 --variants "default,default +fine-tuned student,fine-tuned round 0"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pseudolabel.data.posts import ID_COLUMN, LABEL_COLUMN, LABEL_VALUES, TEXT_COLUMN, load_labeled, load_unlabeled  # noqa: E402
from pseudolabel.rounds.deliver import chosen_rounds, describe  # noqa: E402
from pseudolabel.rounds.loop import Run, RunConfig  # noqa: E402
from pseudolabel.data.metrics import scores  # noqa: E402
from pseudolabel.core.progress import Progress  # noqa: E402
from pseudolabel.rounds.select import NOT_SELECTED  # noqa: E402
from pseudolabel.core.store import load_npy, read_json  # noqa: E402

# the defaults before the co-teacher and the holdout became defaults: no co-teacher, no holdout (round 0
# delivered: the holdout rule, --deliver auto), class-balanced selection capped at the rows over 0.9
BEFORE = dict(co_teacher=0.0, holdout=0.0, threshold=0.9, deliver="auto")
VARIANTS = {  # name -> RunConfig options on top of the defaults ("rounds": this variant's own --rounds)
    # a plain `pseudo run --rounds R`: co-teacher 0.5, class-balanced over all the pool the prior allows,
    # holdout 0.15 scoring the delivered output: the usable rounds' mean blended evenly with the co-teacher
    # (deliver mean); --student auto: the head under AUTO_STUDENT_LABELS labeled posts, the fine-tuned student
    # from there on
    "default": dict(),
    # the default with the head in later rounds whatever the label count (the default before --student auto)
    "default +frozen head": dict(student="head"),
    # the training budget of later rounds against the default (half a pseudo-labeled post per human one each
    # epoch, length-grouped batches): one post per human one as before, padded to max-len or length-grouped;
    # every pseudo-labeled post every epoch; early stopping looking every round-0-sized stretch of rows
    "ratio 1 (the default before)": dict(pseudo_ratio=1.0, student_dynamic_padding=False),
    "ratio 1 +dynamic later rounds": dict(pseudo_ratio=1.0, student_dynamic_padding=True),
    "full pass": dict(pseudo_ratio=None, student_dynamic_padding=False),
    "ratio 1 +monitor every human": dict(pseudo_ratio=1.0, student_dynamic_padding=False, monitor_every="human"),
    "ratio 1 +monitor every human +dynamic later rounds": dict(pseudo_ratio=1.0, student_dynamic_padding=True,
                                                              monitor_every="human"),
    # what a user got before: round 0 on all labeled rows, no holdout (the reference for "delivered - round 0")
    "round 0 alone (no holdout)": dict(rounds=0, holdout=0.0),
    "threshold 0.9 (reference)": dict(strategy="threshold", threshold=0.9),
    "class-balanced 0.9 cap": dict(),
    "class-balanced soft": dict(soft_targets=True, sharpen=0.5),
    "class-balanced soft +noise": dict(soft_targets=True, sharpen=0.5, student_noise=0.1),
    # the reference's source: pseudo-labels from the fold ensemble's mean (later OOF scores not leak-free)
    "class-balanced mean-source": dict(pseudo_source="mean"),
    "threshold 0.9 mean-source": dict(strategy="threshold", threshold=0.9, pseudo_source="mean"),
    # the reference author's own second round weighted pseudo rows 0.5
    "threshold 0.9 weight 0.5": dict(strategy="threshold", threshold=0.9, pseudo_weight=0.5),
    # the reference's selection with a noised student (Gaussian noise of std 0.3 on the standardised features)
    "threshold 0.9 +noise 0.3": dict(strategy="threshold", threshold=0.9, student_noise=0.3),
    # distillation: every pool post, with the fold ensemble's mean probabilities as its soft target
    "whole pool ensemble soft": dict(strategy="top-k", top_k=10 ** 9, pseudo_source="mean", soft_targets=True),
    # the same, the targets sharpened (temperature 0.5) or softened (temperature 2)
    "whole pool ensemble soft T0.5": dict(strategy="top-k", top_k=10 ** 9, pseudo_source="mean", soft_targets=True,
                                          sharpen=0.5),
    "whole pool ensemble soft T2": dict(strategy="top-k", top_k=10 ** 9, pseudo_source="mean", soft_targets=True,
                                        sharpen=2.0),
    # a noised student with word dropout: a fifth of the token positions lose their features while training
    "threshold 0.9 +token dropout 0.2": dict(strategy="threshold", threshold=0.9, student_token_dropout=0.2),
    "whole pool ensemble soft +token dropout 0.2": dict(strategy="top-k", top_k=10 ** 9, pseudo_source="mean",
                                                        soft_targets=True, student_token_dropout=0.2),
    # co-training: pseudo-labels from the head blended evenly with a TF-IDF + LR model on the same folds
    "class-balanced +co-teacher 0.5": dict(co_teacher=0.5),
    "class-balanced top 3000 +co-teacher 0.5": dict(top_k=3000, co_teacher=0.5),
    "class-balanced top 4500 +co-teacher 0.5": dict(top_k=4500, co_teacher=0.5),
    # the cap lowered to what the least-predicted class allows: about 5,000 of the 6,055 pool posts
    "class-balanced all +co-teacher 0.5": dict(top_k=10 ** 9, co_teacher=0.5),
    "threshold 0.9 +co-teacher 0.5": dict(strategy="threshold", threshold=0.9, co_teacher=0.5),
    "whole pool ensemble soft +co-teacher 0.5": dict(strategy="top-k", top_k=10 ** 9, pseudo_source="mean",
                                                     soft_targets=True, co_teacher=0.5),
    # a student that fine-tunes the encoder, on the default run's pseudo-labels (its round 0 and selection are
    # the default variant's: the same seed folder shares them), and fine-tuning alone without pseudo-labels
    "default +fine-tuned student": dict(student="finetune"),
    # the same student on the same selection, its targets the co-teacher blend's probabilities (soft)
    "default +fine-tuned soft student": dict(student="finetune", soft_targets=True),
    # the same student without a monitor slice: every training post of the fold trains, the last epoch is kept
    "default +fine-tuned student +last epoch": dict(student="finetune", finetune_monitor=0.0),
    # fine-tuning without pseudo-labels (--rounds 0: no holdout, so on every labeled post, about 100 more
    # than the student's human part: a comparison that favours fine-tuning alone)
    "fine-tuned round 0": dict(rounds=0, recipe="finetune"),
    # fine-tuned throughout: round 0 fine-tunes the encoder (with the default holdout), the student round
    # fine-tunes it again on round 0's co-teacher pseudo-labels; no frozen head anywhere (the cheap way to a
    # student round at the recipe's max length: the frozen head's round 0 dominates a full-labels run)
    "fine-tuned round 0 + student": dict(recipe="finetune", student="finetune"),
    # the same with the teacher's probabilities as the student's targets (round 0 shared with the above)
    "fine-tuned round 0 + soft student": dict(recipe="finetune", student="finetune", soft_targets=True),
    # uncertainty-aware selection (UST): as many posts per class as the default takes, the least uncertain
    # first (BALD over the fold heads), and with each weighted by -log of its label's variance over them
    "uncertainty": dict(strategy="uncertainty"),
    "uncertainty +weights": dict(strategy="uncertainty", pseudo_weight="uncertainty"),
    "uncertainty +weights +MC dropout 10": dict(strategy="uncertainty", pseudo_weight="uncertainty", mc_passes=10),
    # the same with at most 500 posts selected (a quarter of a 2,000-post pool: easy first matters most when
    # few are taken), and the default capped alike
    "uncertainty top 500 +weights": dict(strategy="uncertainty", pseudo_weight="uncertainty", top_k=500),
    "default top 500": dict(top_k=500),
    # both where each helped inside a round: MC-dropout uncertainty and the 500-post cap
    "uncertainty top 500 +weights +MC dropout 10": dict(strategy="uncertainty", pseudo_weight="uncertainty",
                                                        top_k=500, mc_passes=10),
}
# (variant, round) pairs compared seed by seed where both ran: what the fine-tuned student adds over the
# frozen head trained on the same pseudo-labels, over fine-tuning alone, and what fine-tuning alone adds
COMPARISONS = ((("default +fine-tuned student", 1), ("default", 1)),
               (("default +fine-tuned student", 1), ("default +frozen head", 1)),
               (("default +fine-tuned student", 2), ("default", 2)),
               (("default +fine-tuned student", 2), ("default +fine-tuned student", 1)),
               (("default +fine-tuned soft student", 1), ("default", 1)),
               (("default +fine-tuned soft student", 1), ("default +fine-tuned student", 1)),
               (("default +fine-tuned student +last epoch", 1), ("default", 1)),
               (("default +fine-tuned student +last epoch", 1), ("default +fine-tuned student", 1)),
               (("default +fine-tuned student", 1), ("fine-tuned round 0", 0)),
               (("fine-tuned round 0", 0), ("default", 0)),
               (("fine-tuned round 0 + student", 1), ("fine-tuned round 0 + student", 0)),
               (("fine-tuned round 0 + soft student", 1), ("fine-tuned round 0 + student", 0)),
               (("uncertainty", 1), ("default", 1)),
               (("uncertainty +weights", 1), ("default", 1)),
               (("uncertainty +weights", 1), ("uncertainty", 1)),
               (("uncertainty", 1), ("default", 0)),
               (("uncertainty +weights", 1), ("default", 0)),
               (("uncertainty +weights +MC dropout 10", 1), ("uncertainty +weights", 1)),
               (("uncertainty top 500 +weights", 1), ("default top 500", 1)),
               (("default top 500", 1), ("default", 1)),
               (("uncertainty top 500 +weights +MC dropout 10", 1), ("uncertainty +weights +MC dropout 10", 1)),
               (("uncertainty top 500 +weights +MC dropout 10", 1), ("uncertainty top 500 +weights", 1)))
ON_TODAYS_DEFAULTS = ("default", "default +frozen head", "ratio 1 (the default before)",
                      "ratio 1 +dynamic later rounds", "full pass", "ratio 1 +monitor every human",
                      "ratio 1 +monitor every human +dynamic later rounds", "round 0 alone (no holdout)",
                      "default +fine-tuned student",
                      "default +fine-tuned soft student", "default +fine-tuned student +last epoch",
                      "fine-tuned round 0", "fine-tuned round 0 + student", "fine-tuned round 0 + soft student",
                      "uncertainty", "uncertainty +weights", "uncertainty +weights +MC dropout 10",
                      "uncertainty top 500 +weights", "default top 500",
                      "uncertainty top 500 +weights +MC dropout 10")
for _name, _options in VARIANTS.items():
    if _name not in ON_TODAYS_DEFAULTS:
        VARIANTS[_name] = {**BEFORE, **_options}


def split(labels: np.ndarray, seed: int, eval_share: float, labeled_share: float, pool_rows: int | None = None,
          per_class: int | None = None):
    """(eval rows, labeled rows, pool rows), stratified, as sorted row indices; the pool cut to a random
    `pool_rows` of its rows; labeled share 1: every non-evaluation row labeled, no pool; `per_class`: that
    many labeled rows of each class instead of a share."""
    rows = np.arange(len(labels))
    rest, evaluation = train_test_split(rows, test_size=eval_share, stratify=labels, random_state=seed)
    if per_class:
        rng = np.random.default_rng(seed)
        labeled = np.concatenate([rng.choice(rest[labels[rest] == c], per_class, replace=False)
                                  for c in np.unique(labels)])
        pool = np.setdiff1d(rest, labeled)
    elif labeled_share >= 1:
        labeled, pool = rest, rest[:0]
    else:
        labeled, pool = train_test_split(rest, train_size=labeled_share, stratify=labels[rest], random_state=seed)
    if pool_rows is not None and pool_rows < len(pool):
        pool = np.random.default_rng(seed).choice(pool, pool_rows, replace=False)
    return np.sort(evaluation), np.sort(labeled), np.sort(pool)


def anchor(texts: list[str], labels: np.ndarray, parts, pool_texts: list[str]) -> dict:
    """Supervised TF-IDF + LR against sklearn's self-training on the pool (threshold 0.9, and k_best:
    a tenth of the pool per iteration); also the supervised model's evaluation probabilities."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.semi_supervised import SelfTrainingClassifier

    evaluation, labeled = parts[:2]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    x = vectorizer.fit_transform([texts[i] for i in labeled] + pool_texts)
    x_eval = vectorizer.transform([texts[i] for i in evaluation])
    y = np.concatenate([labels[labeled], np.full(len(pool_texts), -1)])  # class indices; -1 marks the pool
    lr = dict(max_iter=2000, C=4.0, class_weight="balanced")
    supervised = LogisticRegression(**lr).fit(x[:len(labeled)], labels[labeled])
    out = {"supervised": f1_score(labels[evaluation], supervised.predict(x_eval), average="macro")}
    probs = supervised.predict_proba(x_eval)
    for name, options in (("self-training 0.9", dict(threshold=0.9)),
                          ("self-training k_best", dict(criterion="k_best", k_best=max(1, len(pool_texts) // 10)))):
        model = SelfTrainingClassifier(LogisticRegression(**lr), max_iter=10, **options).fit(x, y)
        out[name] = f1_score(labels[evaluation], model.predict(x_eval), average="macro")
    return out, probs


def write_csv(posts, rows: np.ndarray, path: Path, with_label: bool) -> None:
    """The rows as a competition-style CSV (id, text and, for the labeled part, the label)."""
    frame = pd.DataFrame({ID_COLUMN: [posts.ids[i] for i in rows], TEXT_COLUMN: [posts.texts[i] for i in rows]})
    if not len(rows):
        frame = frame.astype(str)
    if with_label:
        frame[LABEL_COLUMN] = np.asarray(LABEL_VALUES)[posts.labels[rows]]
    partial = path.with_name(f".{path.name}.{os.getpid()}")  # atomic: another call may be reading the same split
    frame.to_csv(partial, index=False, encoding="utf-8")
    partial.replace(path)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def run_variant(name: str, options: dict, folder: Path, files: dict, args) -> list[dict]:
    """One variant's `pseudo` run. The variants of a seed are sibling run directories, so those whose
    round-0 options agree share one round 0 and one feature cache (`.stages/` of the seed's folder,
    as any runs side by side do). With --resume an existing run directory is continued (its finished
    rounds kept; more --rounds add rounds)."""
    if folder.exists() and not (args.resume and (folder / "config.json").exists()):
        shutil.rmtree(folder)
    options = dict(options)
    rounds = options.pop("rounds", args.rounds)
    config = RunConfig(run_dir=str(folder), train=str(files["labeled"]), test=str(files["eval"]),
                       unlabeled=str(files["pool"]), encoder=args.encoder, rounds=rounds, folds=args.folds,
                       max_len=args.max_len, epochs=args.epochs, batch_size=args.batch_size, min_steps=args.min_steps,
                       force=args.force, seed=0, executor=args.executor, **options)
    started = time.time()
    result = Run(config, Progress()).execute()
    print(f"  {name}: {len(result.rounds)} round(s), stop {result.stop_reason}, {time.time() - started:.0f}s",
          flush=True)
    return result.rounds


def delivered(folder: Path, eval_labels: np.ndarray) -> dict:
    """The run's delivered output (final.json, final_test_preds.npy) scored on the evaluation split."""
    final = read_json(folder / "final.json")
    probs = load_npy(folder / "final_test_preds.npy")
    return {"round": final["round"], "rounds": chosen_rounds(final), "what": describe(final),
            "weight": final["weight"], "estimate": final["value"],
            "eval_f1": scores(eval_labels, probs)["macro_f1"]}


def round_rows(folder: Path, rounds: list[dict], eval_labels: np.ndarray, pool_labels: np.ndarray | None) -> list[dict]:
    final = read_json(folder / "final.json")
    out = []
    for metrics in rounds:
        k = metrics["round"]
        test = load_npy(folder / f"round_{k}" / "test_preds.npy").mean(axis=0)
        row = {"round": k, "eval_f1": scores(eval_labels, test)["macro_f1"], "oof_f1": metrics["oof"]["macro_f1"],
               "collapsed": metrics["collapsed"], "delivered": k in chosen_rounds(final), "n_pseudo": metrics["n_pseudo"],
               "mix": list(metrics["pseudo_per_class"].values()), "precision": None,
               "seconds": metrics["seconds"]["total"]}
        if k >= 1 and pool_labels is not None:
            chosen = load_npy(folder / f"round_{k}" / "pseudo_labels.npy")  # (folds, pool), class index or -1
            hit = chosen != NOT_SELECTED
            truth = np.broadcast_to(pool_labels, chosen.shape)
            row["precision"] = float((chosen[hit] == truth[hit]).mean()) if hit.any() else None
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="../shared/data/smp_virus_train.labeled.csv")
    parser.add_argument("--encoder", default="models/weibo-mlm-4l256")
    parser.add_argument("--rows", type=int, default=None, help="use a stratified subset of this many rows")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    parser.add_argument("--min-steps", type=int, default=None, help="override the recipe's minimum steps")
    parser.add_argument("--force", action="store_true",
                        help="select pseudo-labels even from a collapsed round (smoke runs at tiny sizes)")
    parser.add_argument("--eval-share", type=float, default=0.2)
    parser.add_argument("--labeled-share", type=float, default=0.1,
                        help="share of the non-evaluation rows that keep their labels (1: all of them, full labels)")
    parser.add_argument("--labeled-per-class", type=int, default=None,
                        help="this many labeled posts of each class instead of --labeled-share")
    parser.add_argument("--pool-rows", type=int, default=None, help="cut the pool to a random this many posts")
    parser.add_argument("--pool-file", default=None,
                        help="take the pool from this unlabeled file (random --pool-rows of it) instead of the "
                             "train set's unlabeled part; its pseudo-labels' precision is then unknown")
    parser.add_argument("--work", default="runs/.scarce-labels")
    parser.add_argument("--resume", action="store_true",
                        help="continue the variants' run directories under --work instead of starting them over")
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where each run's folds train: this process, or Ray tasks, a fold per CPU (RAY_ADDRESS, "
                             "else a local instance on 127.0.0.1); the numbers are the same")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for TensorFlow (0: all); two calls with 1 thread each share a 2-core machine")
    args = parser.parse_args()
    if args.threads:
        from pseudolabel.core._tf import tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    posts = load_labeled(args.train)
    if args.rows and args.rows < len(posts.labels):
        keep = np.sort(train_test_split(np.arange(len(posts.labels)), train_size=args.rows, stratify=posts.labels,
                                        random_state=0)[0])
        posts = SimpleNamespace(ids=[posts.ids[i] for i in keep], texts=[posts.texts[i] for i in keep],
                                labels=posts.labels[keep])
    labels, texts = posts.labels, posts.texts
    pool_posts = None
    if args.pool_file:
        if not args.pool_rows:
            raise SystemExit("--pool-file needs --pool-rows")
        pool_posts = load_unlabeled(args.pool_file, limit=None)
        args.pool_rows = min(args.pool_rows, len(pool_posts.texts))
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    work = Path(args.work)
    results = []
    started = time.time()
    for seed in [int(s) for s in args.seeds.split(",")]:
        parts = split(labels, seed, args.eval_share, args.labeled_share, None if pool_posts else args.pool_rows,
                      args.labeled_per_class)
        evaluation, labeled, pool = parts
        pool_source, pool_labels = posts, labels[pool]
        if pool_posts:
            pool = np.sort(np.random.default_rng(seed).choice(len(pool_posts.texts), args.pool_rows, replace=False))
            pool_source, pool_labels = pool_posts, None
        folder = work / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        files = {"eval": folder / "eval.csv", "labeled": folder / "labeled.csv", "pool": folder / "pool.csv"}
        write_csv(posts, evaluation, files["eval"], False)
        write_csv(posts, labeled, files["labeled"], True)
        write_csv(pool_source, pool, files["pool"], False)
        print(f"seed {seed}: {len(labeled)} labeled, {len(pool)} pool, {len(evaluation)} evaluation posts", flush=True)
        anchor_scores, tfidf_eval = anchor(texts, labels, parts, [pool_source.texts[i] for i in pool])
        entry = {"seed": seed, "sizes": [len(labeled), len(pool), len(evaluation)], "anchor": anchor_scores,
                 "variants": {}}
        print("  anchor (TF-IDF + LR): " + ", ".join(f"{k} {v:.4f}" for k, v in entry["anchor"].items()), flush=True)
        first = folder / slug(names[0])
        for name in names:
            run_dir = folder / slug(name)
            rounds = run_variant(name, VARIANTS[name], run_dir, files, args)
            entry["variants"][name] = round_rows(run_dir, rounds, labels[evaluation], pool_labels)
            entry.setdefault("delivered", {})[name] = got = delivered(run_dir, labels[evaluation])
            print(f"  {name}: delivered {got['what']}: evaluation "
                  f"macro-F1 {got['eval_f1']:.4f} (round 0 {entry['variants'][name][0]['eval_f1']:.4f})", flush=True)
        # what a co-teacher adds to round 0 as a teacher: the head's fold ensemble blended evenly with the
        # supervised TF-IDF + LR (all labeled rows) on the evaluation split; not an output `pseudo` delivers
        round0 = load_npy(first / "round_0" / "test_preds.npy").mean(axis=0)
        entry["teacher_blend"] = scores(labels[evaluation], 0.5 * round0 + 0.5 * tfidf_eval)["macro_f1"]
        print(f"  round 0 + TF-IDF + LR blend (a teacher, not delivered): {entry['teacher_blend']:.4f}", flush=True)
        results.append(entry)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2))

    report(results, names, args, time.time() - started)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


def report(results: list[dict], names: list[str], args, seconds: float) -> None:
    sizes = results[0]["sizes"]
    print(f"\nscarce labels · {args.train} · {sizes[0]} labeled / {sizes[1]} pool / {sizes[2]} evaluation posts · "
          f"seeds {args.seeds} · {args.folds} folds, max_len {args.max_len}, epochs {args.epochs or 'recipe'} · "
          f"encoder {args.encoder} · {platform.machine()}, {os.cpu_count()} cores · {seconds:.0f}s")
    print("| seed | variant | round | eval macro-F1 | OOF macro-F1 | pseudo-labels | precision | mix -1/0/1 | delivered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in results:
        for name in names:
            for r in entry["variants"][name]:
                precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
                print(f"| {entry['seed']} | {name} | {r['round']} | {r['eval_f1']:.4f} | {r['oof_f1']:.4f} | "
                      f"{r['n_pseudo']} | {precision} | {'/'.join(str(m) for m in r['mix'])} | "
                      f"{'yes' if r['delivered'] else ''} |")
    print("\nmean ± std over seeds of the evaluation macro-F1 (gain = best pseudo round - round 0; "
          "delivered - round 0 is what the user gets)")
    print("| variant | round 0 | best pseudo round | gain | delivered | delivered - round 0 |")
    print("|---|---|---|---|---|---|")

    def stat(values) -> str:
        """mean ± std over the seeds that have a value (a run whose round 0 collapsed has no later round)."""
        values = np.asarray(values, float)
        kept = values[~np.isnan(values)]
        if not len(kept):
            return "–"
        seeds = "" if len(kept) == len(values) else f" ({len(kept)} of {len(values)} seeds)"
        return f"{kept.mean():.4f} ± {kept.std():.4f}{seeds}"

    alone = "round 0 alone (no holdout)"
    for name in names:
        r0 = [e["variants"][name][0]["eval_f1"] for e in results]
        best = [max((r["eval_f1"] for r in e["variants"][name][1:]), default=np.nan) for e in results]
        given = [e["delivered"][name]["eval_f1"] for e in results]
        print(f"| {name} | {stat(r0)} | {stat(best)} | {stat(np.subtract(best, r0))} | {stat(given)} | "
              f"{stat(np.subtract(given, r0))} |")
    print("\nquality and time: each round's fold ensemble on the evaluation split and its wall time (training and "
          "scoring its folds), mean ± std over seeds")
    print("| variant | round | eval macro-F1 | pseudo-label precision | seconds | × round 0 |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for k in range(max(len(e["variants"][name]) for e in results)):
            ran = [e["variants"][name] for e in results if len(e["variants"][name]) > k]
            f1 = [rounds[k]["eval_f1"] for rounds in ran] + [np.nan] * (len(results) - len(ran))
            sec = np.array([rounds[k].get("seconds", np.nan) for rounds in ran], float)
            r0 = np.array([rounds[0].get("seconds", np.nan) for rounds in ran], float)
            hits = [rounds[k]["precision"] for rounds in ran]
            precision = "–" if any(h is None for h in hits) else stat(hits)
            print(f"| {name} | {k} | {stat(f1)} | {precision} | {np.mean(sec):.0f} ± {np.std(sec):.0f} | "
                  f"{np.mean(sec / r0):.2f} |")
    blend = [e["teacher_blend"] for e in results]
    r0 = [e["variants"][names[0]][0]["eval_f1"] for e in results]
    print(f"| round 0 + TF-IDF + LR, even blend (a teacher, not delivered) | | | | {stat(blend)} | "
          f"{stat(np.subtract(blend, r0))} |")
    for key in results[0]["anchor"]:
        print(f"| anchor: {key} | | | | {stat([e['anchor'][key] for e in results])} | "
              f"{stat([e['anchor'][key] - e['anchor']['supervised'] for e in results])} (vs supervised) |")
    if alone in names:
        base = [e["delivered"][alone]["eval_f1"] for e in results]
        print(f"\ndelivered - {alone} (what a user got before), per seed {args.seeds}, in points")
        print("| variant | per seed | mean | worst |")
        print("|---|---|---|---|")
        for name in names:
            gains = 100 * np.subtract([e["delivered"][name]["eval_f1"] for e in results], base)
            print(f"| {name} | {', '.join(f'{g:+.1f}' for g in gains)} | {gains.mean():+.2f} | {gains.min():+.1f} |")
    if len(names) > 1:
        print(f"\ndelivered - {names[0]}'s delivered, and - its round 0, per seed {args.seeds}, in points")
        print(f"| variant | per seed (- {names[0]}) | mean | worst | per seed (- round 0) | mean | worst |")
        print("|---|---|---|---|---|---|---|")
        first = [e["delivered"][names[0]]["eval_f1"] for e in results]
        r0 = [e["variants"][names[0]][0]["eval_f1"] for e in results]
        for name in names:
            given = [e["delivered"][name]["eval_f1"] for e in results]
            cells = []
            for base in (first, r0):
                gains = 100 * np.subtract(given, base)
                cells.append(f"{', '.join(f'{g:+.1f}' for g in gains)} | {gains.mean():+.2f} | {gains.min():+.1f}")
            print(f"| {name} | {' | '.join(cells)} |")

    def f1_at(e: dict, name: str, k: int) -> float:
        rounds = e["variants"][name]
        return rounds[k]["eval_f1"] if k < len(rounds) else np.nan  # nan: that seed's run stopped before round k

    ran = {name: max(len(e["variants"][name]) for e in results) for name in names}  # rounds any seed ran
    supervised = [e["anchor"]["supervised"] for e in results]
    pairs = [((a, k), (b, j), [f1_at(e, b, j) for e in results])
             for (a, k), (b, j) in COMPARISONS if k < ran.get(a, 0) and j < ran.get(b, 0)]
    pairs += [((name, k), ("char TF-IDF + LR (supervised)", None), supervised)
              for name in names for k in range(ran[name])]
    print(f"\nevaluation macro-F1, one round's fold ensemble against another's, per seed {args.seeds}, in points "
          "(–: a seed whose run stopped before that round; mean and worst over the others)")
    print("| round | against | per seed | mean | worst |")
    print("|---|---|---|---|---|")
    for (name, k), (other, j), against in pairs:
        gains = 100 * np.subtract([f1_at(e, name, k) for e in results], against)
        kept = gains[~np.isnan(gains)]
        if not len(kept):
            continue
        cells = ", ".join("–" if np.isnan(g) else f"{g:+.1f}" for g in gains)
        print(f"| {name}, round {k} | {other}{'' if j is None else f', round {j}'} | {cells} | {kept.mean():+.2f} | "
              f"{kept.min():+.1f} |")


if __name__ == "__main__":
    main()
