"""Round 0 on a local Ray cluster of 1, 2, ... single-thread workers (`--executor ray --fold-cpus 1`): the wall
time of the folds' training, and of round 0 whole (the folds, then test, pool and holdout scored as chunked
tasks), per worker count, the speed-ups over one worker, and whether the numbers are the same whatever the
worker count.

    python benchmarks/ray_folds.py                      # bundled sample and encoder, 5 folds, workers 1,2
    python benchmarks/ray_folds.py --folds 4 --workers 1,2 --max-len 140
    python benchmarks/ray_folds.py --no-pool            # labeled posts only: the folds and their validation

For each worker count it starts a local Ray instance on 127.0.0.1 with that many CPUs, runs a real
`pseudo run --rounds 0 --executor ray --fold-cpus 1` in its own work folder (features cached first, not
timed), and reads the folds' training time from round 0's metrics.json. Not part of the suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # the driver's own TensorFlow: one thread, as a worker's
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from pseudolabel.core.progress import Progress  # noqa: E402
from pseudolabel.core.store import read_json  # noqa: E402
from pseudolabel.rounds.loop import Run, RunConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def one(workers: int, args) -> dict:
    import ray

    run_dir = Path(args.work) / f"workers-{workers}" / "run"
    if run_dir.parent.exists():
        shutil.rmtree(run_dir.parent)
    ray.init(address="local", num_cpus=workers, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        config = RunConfig(train=args.train, test=args.test or None, unlabeled=args.unlabeled or None,
                           encoder=args.encoder, rounds=0, unlabeled_limit=args.pool_rows,
                           folds=args.folds, max_len=args.max_len, dynamic_padding=args.dynamic_padding,
                           executor="ray", fold_cpus=1, run_dir=str(run_dir), seed=args.seed)
        Run(config, Progress()).execute()
    finally:
        ray.shutdown()
    metrics = read_json(run_dir / "round_0" / "metrics.json")
    return {"workers": workers, "train": metrics["seconds"]["train"], "round": metrics["seconds"]["total"],
            "fold_seconds": [f["seconds"] for f in metrics["folds"]],
            "oof": np.load(run_dir / "round_0" / "oof_preds.npy"), "macro_f1": metrics["oof"]["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=str(REPO / "data" / "train.labeled.csv"))
    parser.add_argument("--encoder", default=str(REPO / "models" / "weibo-mlm-4l256"))
    parser.add_argument("--test", default=str(REPO / "data" / "test.csv"))
    parser.add_argument("--unlabeled", default=str(REPO / "data" / "unlabeled.csv"))
    parser.add_argument("--pool-rows", type=int, default=None, help="the first N rows of --unlabeled")
    parser.add_argument("--no-pool", action="store_true", help="no test file and no pool: the folds only")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--dynamic-padding", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(REPO / "runs" / ".ray-folds"))
    args = parser.parse_args()
    if args.no_pool:
        args.test = args.unlabeled = ""
    results = [one(int(n), args) for n in args.workers.split(",")]
    base = results[0]
    pool = f"pool {args.unlabeled} ({args.pool_rows or 'all'} rows), test {args.test}" if args.unlabeled else "no pool"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.folds} folds of {args.train}, {pool}, encoder "
          f"{args.encoder}, max length {args.max_len}{', dynamic padding' if args.dynamic_padding else ''}")
    print()
    print("| workers (1 thread each) | round 0 folds, wall | speed-up | round 0 whole, wall | speed-up | mean fold | "
          "OOF macro-F1 | OOF equal to 1 worker's |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        same = float(np.abs(r["oof"] - base["oof"]).max())
        print(f"| {r['workers']} | {r['train']:.1f} s | {base['train'] / r['train']:.2f}× | {r['round']:.1f} s | "
              f"{base['round'] / r['round']:.2f}× | "
              f"{np.mean(r['fold_seconds']):.1f} s | {r['macro_f1']:.4f} | "
              f"{'identical' if same == 0 else f'max difference {same:.1e}'} |")


if __name__ == "__main__":
    main()
