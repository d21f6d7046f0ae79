"""Recipe ablation: which changes to the reference head make it learn on frozen features.

    python benchmarks/recipe_ablation.py                      # shared train set, all 5 folds
    python benchmarks/recipe_ablation.py --rows 300 --max-len 32 --folds-used 1   # tiny, a minute

Features are computed once (cached under --cache); every variant trains the same folds
(StratifiedKFold(5, shuffle=True, random_state=99)) and is scored out of fold on them. A linear
probe on the same features is printed as the bar a head should clear. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pseudolabel.rounds.cv import FeatureSource, RoundPlan, make_folds, train_fold  # noqa: E402
from pseudolabel.core.store import RoundFiles  # noqa: E402
from pseudolabel.data.posts import load_labeled  # noqa: E402
from pseudolabel.encoding.encoder import FrozenEncoder, find_encoder, load_tokenizer, quiet_transformers  # noqa: E402
from pseudolabel.encoding.features import features_for  # noqa: E402
from pseudolabel.data.metrics import scores  # noqa: E402
from pseudolabel.heads.model import RECIPES  # noqa: E402
from pseudolabel.encoding.probe import linear_probe  # noqa: E402
from pseudolabel.core.progress import Progress  # noqa: E402
from pseudolabel.data.tokenize import tokenize  # noqa: E402

SEED = RECIPES["seed"]
# core = both fixes of the known trap: standardised features, no SpatialDropout, BN momentum 0.9
CORE = replace(SEED, name="core", standardize=True, spatial_dropout=0.0, bn_momentum=0.9)
VARIANTS = {
    "seed": SEED,
    "+standardize": replace(SEED, name="+standardize", standardize=True),
    "-spatialdrop +bn0.9": replace(SEED, name="-spatialdrop +bn0.9", spatial_dropout=0.0, bn_momentum=0.9),
    "core": CORE,
    "core +zeropad": replace(CORE, name="core +zeropad", zero_padding=True),
    "core +150steps": replace(CORE, name="core +150steps", min_steps=150),
    "core +300steps +earlystop": replace(CORE, name="core +300steps +earlystop", min_steps=300, early_stopping=True,
                                         patience=99),
    "core +300steps +earlystop lr3e-4": replace(CORE, name="core +300steps +earlystop lr3e-4", min_steps=300,
                                                early_stopping=True, learning_rate=3e-4, patience=99),
    "default +crossentropy": replace(RECIPES["default"], name="default +crossentropy", loss="crossentropy"),
    "default no patience": replace(RECIPES["default"], name="default no patience", patience=99),
    "default -preciseBN": replace(RECIPES["default"], name="default -preciseBN", precise_bn=0),
    "seed +preciseBN": replace(SEED, name="seed +preciseBN", precise_bn=2048),
    "default +dynamic padding": replace(RECIPES["default"], name="default +dynamic padding", dynamic_padding=True),
    "default": RECIPES["default"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="../shared/data/smp_virus_train.labeled.csv")
    parser.add_argument("--encoder", default="models/bert-mini-random")
    parser.add_argument("--rows", type=int, default=None, help="use a stratified subset of this many rows")
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--folds-used", type=int, default=5, help="train only the first N of the 5 folds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--cache", default="runs/.bench-cache")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = parser.parse_args()
    quiet_transformers()

    posts = load_labeled(args.train)
    labels = posts.labels
    texts = posts.texts
    if args.rows and args.rows < len(labels):
        from sklearn.model_selection import train_test_split

        keep = np.sort(train_test_split(np.arange(len(labels)), train_size=args.rows, stratify=labels,
                                        random_state=0)[0])
        labels, texts = labels[keep], [texts[i] for i in keep]
    files = find_encoder(args.encoder)
    started = time.time()
    feats = features_for("labeled", texts, cache_dir=Path(args.cache), encoder_identity=files.identity,
                         max_len=args.max_len, tokenize=lambda t: tokenize(t, load_tokenizer(files), args.max_len),
                         encoder=lambda: FrozenEncoder(files), stream=False, progress=Progress())
    print(f"features {feats.shape} ready in {time.time() - started:.0f}s ({args.encoder})", flush=True)
    folds = make_folds(labels, 5)
    used = folds < args.folds_used
    probe = linear_probe(feats, labels, folds, range(args.folds_used))

    rows = [("linear probe (mean+max pool, LR)", probe, 0.0, "-")]
    for name in args.variants.split(","):
        recipe = VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp:
            plan = RoundPlan(round=0, files=RoundFiles(tmp), mode="cached", recipe=recipe, max_len=args.max_len,
                             hidden=feats.shape[2], labels=labels, folds=folds,
                             labeled=FeatureSource(feats, recipe.zero_padding), test=None, unlabeled=None)
            t = time.time()
            records = [train_fold(plan, fold, Progress()) for fold in range(args.folds_used)]
            plan.heads.release()
            seconds = time.time() - t
            oof = np.zeros((len(labels), 3), np.float32)
            for fold in range(args.folds_used):
                fold_files = plan.files.fold(fold)
                oof[np.load(fold_files.valid_idx)] = np.load(fold_files.valid_preds)
        result = scores(labels[used], oof[used])
        epochs = "/".join(str(f["best_epoch"]) + ("" if f["best_epoch"] == f["epochs"] else f"of{f['epochs']}")
                          for f in records)
        rows.append((name, result, seconds, epochs))
        print(f"{name:<30} macro-F1 {result['macro_f1']:.4f}  {seconds:6.0f}s", flush=True)

    print(f"\nrecipe ablation · {len(labels)} posts · folds used {args.folds_used}/5 · max_len {args.max_len} · "
          f"encoder {files.describe()} · {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores")
    print("| variant | OOF macro-F1 | F1 -1 / 0 / 1 | predicted -1/0/1 | collapsed | epochs | time |")
    print("|---|---|---|---|---|---|---|")
    for name, r, seconds, epochs in rows:
        f1 = " / ".join(f"{v:.3f}" for v in r["f1_per_class"].values())
        pred = "/".join(str(v) for v in r["predicted_per_class"].values())
        print(f"| {name} | {r['macro_f1']:.4f} | {f1} | {pred} | {'yes' if r['collapsed'] else 'no'} | "
              f"{epochs} | {seconds:.0f}s |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([{"variant": n, "scores": r, "seconds": s} for n, r, s, _ in rows],
                                                  indent=2))


if __name__ == "__main__":
    main()
