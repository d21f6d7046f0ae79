"""Encoder quality: how much sentiment an encoder's frozen features carry.

    python benchmarks/encoder_quality.py --encoder models/bert-mini-random
    python benchmarks/encoder_quality.py --encoder DIR --round0      # also the default recipe's round-0 OOF F1

For the encoder folder: the linear-probe macro-F1 (mean+max pooled features of real tokens ->
logistic regression, OOF over StratifiedKFold(5, shuffle=True, random_state=99)) on the shared
8,409-post train set, and the same for a random encoder of the same shape. With --round0, also
the round-0 OOF macro-F1 of the default recipe on both. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pseudolabel.rounds.cv import FeatureSource, RoundPlan, make_folds, run_folds  # noqa: E402
from pseudolabel.core.store import RoundFiles  # noqa: E402
from pseudolabel.data.posts import load_labeled  # noqa: E402
from pseudolabel.encoding.encoder import (FrozenEncoder, find_encoder, load_tokenizer, quiet_transformers,  # noqa: E402
                                 save_random_encoder)
from pseudolabel.encoding.features import features_for  # noqa: E402
from pseudolabel.data.metrics import scores  # noqa: E402
from pseudolabel.heads.model import RECIPES  # noqa: E402
from pseudolabel.encoding.probe import linear_probe  # noqa: E402
from pseudolabel.core.progress import Progress  # noqa: E402
from pseudolabel.data.tokenize import tokenize  # noqa: E402


def evaluate(folder: Path, texts, labels, folds, args) -> dict:
    files = find_encoder(folder)
    t = time.time()
    feats = features_for("labeled", texts, cache_dir=Path(args.cache), encoder_identity=files.identity,
                         max_len=args.max_len, tokenize=lambda t: tokenize(t, load_tokenizer(files), args.max_len),
                         encoder=lambda: FrozenEncoder(files), stream=False, progress=Progress())
    out = {"encoder": files.describe(), "features_seconds": time.time() - t,
           "linear_probe": linear_probe(feats, labels, folds)}
    if args.round0:
        recipe = RECIPES["default"]
        with tempfile.TemporaryDirectory() as tmp:
            plan = RoundPlan(round=0, files=RoundFiles(tmp), mode="cached", recipe=recipe, max_len=args.max_len,
                             hidden=feats.shape[2], labels=labels, folds=folds, labeled=FeatureSource(feats),
                             test=None, unlabeled=None)
            t = time.time()
            result = run_folds(plan, Progress())
            plan.heads.release()
            out["round0"] = scores(labels, result.oof)
            out["round0_seconds"] = time.time() - t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--train", default=str(ROOT.parent / "shared" / "data" / "smp_virus_train.labeled.csv"))
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--round0", action="store_true", help="also train round 0 with the default recipe")
    parser.add_argument("--no-random", action="store_true", help="skip the random encoder of the same shape")
    parser.add_argument("--cache", default="runs/.bench-cache")
    args = parser.parse_args()
    quiet_transformers()

    posts = load_labeled(args.train)
    folds = make_folds(posts.labels, 5)
    results = {"encoder": evaluate(Path(args.encoder), posts.texts, posts.labels, folds, args)}
    if not args.no_random:
        cfg = find_encoder(args.encoder).config_dict()
        with tempfile.TemporaryDirectory() as tmp:
            rand = save_random_encoder(Path(tmp) / "random", find_encoder(args.encoder).vocab,
                                       layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                                       heads=cfg["num_attention_heads"], intermediate=cfg["intermediate_size"],
                                       max_positions=cfg["max_position_embeddings"], seed=12345)
            results["random"] = evaluate(rand.folder, posts.texts, posts.labels, folds, args)
    print(f"encoder quality · {len(posts)} posts of {args.train} · 5-fold OOF macro-F1")
    for name, r in results.items():
        line = f"{name:<8} {r['encoder']}: linear probe {r['linear_probe']['macro_f1']:.4f}"
        if "round0" in r:
            line += (f", round 0 (default recipe) {r['round0']['macro_f1']:.4f}"
                     f"{' COLLAPSED' if r['round0']['collapsed'] else ''} in {r['round0_seconds']:.0f}s "
                     f"(F1 -1/0/1 {' / '.join(f'{v:.3f}' for v in r['round0']['f1_per_class'].values())}, "
                     f"predicted {'/'.join(str(v) for v in r['round0']['predicted_per_class'].values())})")
        print(line)
    print(json.dumps({k: {"probe": v["linear_probe"]["macro_f1"], "round0": v.get("round0", {}).get("macro_f1")}
                      for k, v in results.items()}))


if __name__ == "__main__":
    main()
