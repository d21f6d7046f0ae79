"""Memory and speed of `pseudo predict` on large files: peak RSS must not grow with the file.

    python benchmarks/predict_memory.py                          # 10k and 100k posts, a tiny run built here
    python benchmarks/predict_memory.py --run-dir runs/run-XXXX  # with a run of yours (e.g. the demo's)
    python benchmarks/predict_memory.py --rows 2000,20000 --max-len 32   # a quick look
    python benchmarks/predict_memory.py --run-dir runs/run-XXXX --rows 2000 --each-round
        # what the delivered output costs against each round it averages, predicted alone (--round K)

Posts come from the shared pool (`../shared/data/covid_weibo_200k.unlabeled.csv`: real Weibo posts,
the first N rows; repeated if N is larger), else from the bundled sample. Without --run-dir a run is
made here first: a random 2-layer, hidden-64 encoder with the bert-base-chinese vocabulary, the
default recipe on the bundled labeled posts, --rounds 0 --folds 2 --dynamic-padding. Each size is
predicted by `pseudo predict` in a fresh process; its peak RSS is that process's own (getrusage of
the one child of a wrapper process). Prints seconds, posts per second and peak RSS per size, and the
ratio of the largest size's peak RSS to the smallest's.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED_POOL = ROOT.parent / "shared" / "data" / "covid_weibo_200k.unlabeled.csv"
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def posts_file(source: Path, rows: int, out: Path) -> Path:
    """The first `rows` posts of `source` (cycled if it has fewer) as a two-column CSV: 微博id, 微博中文内容."""
    from pseudolabel.data.posts import iter_posts

    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["微博id", "微博中文内容"])
        written = 0
        while written < rows:
            for posts in iter_posts(source, 8192):
                take = posts.texts[:rows - written]
                writer.writerows([f"{written + i}", t] for i, t in enumerate(take))
                written += len(take)
                if written >= rows:
                    break
    return out


def tiny_run(folder: Path, max_len: int) -> Path:
    from pseudolabel.encoding.encoder import save_random_encoder

    encoder = folder / "encoder"
    save_random_encoder(encoder, ROOT / "models" / "bert-mini-random" / "vocab.txt", layers=2, hidden=64, heads=2,
                        intermediate=128, max_positions=max(64, max_len), seed=1)
    run_dir = folder / "run"
    subprocess.run([sys.executable, "-m", "pseudolabel", "run", "--rounds", "0", "--folds", "2", "--max-len",
                    str(max_len), "--dynamic-padding", "--encoder", str(encoder), "--test", "", "--unlabeled", "",
                    "--run-dir", str(run_dir)], check=True, stdout=subprocess.DEVNULL)
    return run_dir


def measure(run_dir: Path, posts: Path, out: Path, round: int | None = None) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `pseudo predict` over `posts` in a fresh process (`round`: that round alone)."""
    started = time.time()
    alone = [] if round is None else ["--round", str(round)]
    done = subprocess.run([sys.executable, "-c", WRAP, sys.executable, "-m", "pseudolabel", "predict", str(posts),
                           "--run-dir", str(run_dir), "--out", str(out), *alone], capture_output=True, text=True,
                          check=True)
    peak_kib, code = done.stdout.split()
    if code != "0":
        raise SystemExit(f"pseudo predict failed on {posts} (exit {code}): {done.stderr[-2000:]}")
    return time.time() - started, int(peak_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="A finished run to predict with [default: a tiny one built here].")
    parser.add_argument("--rows", default="10000,100000", help="Comma-separated file sizes in posts.")
    parser.add_argument("--max-len", type=int, default=64, help="Tokens per post of the tiny run.")
    parser.add_argument("--source", type=Path, default=None, help="CSV to draw posts from [default: the shared "
                                                                  "pool, else the bundled sample].")
    parser.add_argument("--each-round", action="store_true", help="With --run-dir: also time the first size "
                        "predicted by each round the delivered output averages, alone (--round K).")
    args = parser.parse_args()
    if args.each_round and not args.run_dir:
        parser.error("--each-round needs --run-dir (a run that delivered several rounds)")
    sizes = [int(n) for n in args.rows.split(",")]
    source = args.source or (SHARED_POOL if SHARED_POOL.is_file() else ROOT / "data" / "unlabeled.csv")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = args.run_dir or tiny_run(tmp, args.max_len)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
        print(f"run: {run_dir}{' (built here: random 2-layer hidden-64 encoder)' if not args.run_dir else ''}; "
              f"posts from {source}")
        print(f"{'posts':>9} {'seconds':>9} {'posts/s':>9} {'peak RSS MiB':>13}")
        peaks = []
        for n in sizes:
            seconds, peak = measure(run_dir, posts_file(source, n, tmp / f"posts-{n}.csv"), tmp / f"pred-{n}.csv")
            peaks.append(peak)
            print(f"{n:>9,} {seconds:>9.1f} {n / seconds:>9.0f} {peak:>13.0f}", flush=True)
        print(f"peak RSS ratio {sizes[-1]:,} / {sizes[0]:,} posts: {peaks[-1] / peaks[0]:.2f}")
        if args.each_round:
            each_round(run_dir, tmp / f"posts-{sizes[0]}.csv", sizes[0], tmp)


def model_bytes(run_dir: Path, round: int | None = None) -> int:
    """Bytes of the fold models a prediction loads (heads, or fine-tuned fold models with their encoders)."""
    from pseudolabel.delivery.delivered import from_run

    return sum(Path(p).stat().st_size for part in from_run(run_dir, round).parts for p in part.heads)


def each_round(run_dir: Path, posts: Path, n: int, tmp: Path) -> None:
    """The delivered output against each round it averages, predicted alone, on the same posts."""
    from pseudolabel.core.store import read_json
    from pseudolabel.rounds.deliver import chosen_rounds

    rounds = chosen_rounds(read_json(run_dir / "final.json"))
    print(f"\n{n:,} posts: the delivered output (rounds {', '.join(map(str, rounds))}) against each round alone")
    print("| predicted with | seconds | × the last round alone | fold model MiB |")
    print("|---|---|---|---|")
    timed = {k: measure(run_dir, posts, tmp / f"alone-{k}.csv", k)[0] for k in rounds}
    delivered = measure(run_dir, posts, tmp / "delivered.csv")[0]
    last = timed[rounds[-1]]
    for name, seconds, k in [*((f"round {k} alone", timed[k], k) for k in rounds), ("delivered", delivered, None)]:
        print(f"| {name} | {seconds:.1f} | {seconds / last:.2f} | {model_bytes(run_dir, k) / 2 ** 20:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
