"""How a run's cost grows with its data, and what the competition's size would cost.

    python benchmarks/scale.py                                   # labeled 1k..8k, pool 2k..200k (hours on 2 cores)
    python benchmarks/scale.py --sizes 250:1000,500:2000,1000:4000,2000:8000 --max-len 64 --threads 1
    python benchmarks/scale.py --sizes 60:120,120:240 --max-len 16 --rounds 1 --base-shape 2:64   # a smoke run
    python benchmarks/scale.py --sizes 840:7569 --test-rows 1787 --skip-costs --threads 2   # one split's run

Three parts, printed as markdown tables:
  1. Growth: a real `pseudo run --rounds R` (defaults otherwise) at each size `labeled:pool` (labeled rows a
     stratified sample of the shared labeled file, the pool the first rows of the shared unlabeled file, a
     test file of labeled/10 rows (--test-rows) of the competition's test file), each in a fresh child
     process: per stage wall time (features from the run's own "encode <split>: N done in S s" lines, each
     round's fold training and scoring from its metrics.json, the rest of a round: selection, co-teacher,
     delivery), the child's peak RSS (`os.wait4`) and the run directory's disk. Then each stage's growth
     exponent b, fitted as time ~ size^b by least squares on log-log over the sizes, against the rows that
     stage handles, and each run's wall time over its round 0 (training and scoring its folds).
  2. Per-post cost at the shape of bert-base (12 layers, hidden 768, random weights, built here): the frozen
     encoder, the recipe's head and, where the projected run fine-tunes (`--student auto`), the student
     (training and scoring steps), timed as `pseudo run --plan` times them.
  3. A projection for 100k labeled / 10k test / 500k pool posts with the defaults, through `--plan`'s cost
     model (epochs at most, so upper bounds): on this CPU with the measured bert-base costs, and on one GPU
     with stated, assumed rates (nothing here measures a GPU).
Not part of the test suite (a smoke run of it is).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

ENCODED = re.compile(r"^encode (\w+): ([\d,]+) done in ([\d.]+) s$", re.M)
# Assumed GPU rates (posts per second), not measured here: a bert-base forward pass at length 128-140 is
# about 2 x 110M x 140 = 31 GFLOP a post; an A100-class card does 312 TFLOP/s in fp16, so a few thousand
# posts a second at realistic utilisation; the head's GRU (sigmoid activation: no cuDNN kernel) runs step by
# step, so its rates are set at the same order rather than at the matrix units' limit.
GPU_RATES = {"encode": 2000.0, "train": 2000.0, "score": 6000.0,
             # the fine-tuned student (--student auto from 5,000 labeled posts on): a training step is a forward
             # and a backward pass of the encoder (about 3 forward passes), its scoring one forward pass
             "tune": 700.0, "tune_score": 2000.0}
GPU_STUDENT_SETUP = 30.0  # seconds to load a bert-base student onto a GPU and trace its steps, once a fold (assumed)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        labeled, _, pool = part.partition(":")
        sizes.append((int(labeled), int(pool or 0)))
    return sizes


def write_inputs(folder: Path, n_labeled: int, args) -> dict[str, str]:
    """A stratified sample of the shared labeled file and test_rows(n_labeled) rows of the test file, as CSVs."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from pseudolabel.data.posts import ID_COLUMN, TEXT_COLUMN, load_labeled, load_unlabeled

    labeled = load_labeled(args.train)
    rows = np.arange(len(labeled))
    if n_labeled < len(rows):
        rows = np.sort(train_test_split(rows, train_size=n_labeled, stratify=labeled.labels,
                                        random_state=args.seed)[0])
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(args.train, dtype=str, keep_default_na=False)
    frame.iloc[rows].to_csv(folder / "train.csv", index=False)
    test = load_unlabeled(args.test, test_rows(n_labeled, args))
    pd.DataFrame({ID_COLUMN: test.ids, TEXT_COLUMN: test.texts}).to_csv(folder / "test.csv", index=False)
    return {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")}


def test_rows(n_labeled: int, args) -> int:
    """Rows of the test file a run at `n_labeled` scores: --test-rows, else a tenth of the labeled posts."""
    return args.test_rows or max(1, n_labeled // 10)


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (links not followed)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def run_disk(run_dir: Path) -> tuple[int, int]:
    """(all, features) bytes of a run: its folder and the shared stages beside it (round 0, the feature
    cache), which its folder links to."""
    stages = run_dir.parent / ".stages"
    return disk_bytes(run_dir) + disk_bytes(stages), disk_bytes(stages / "features")


def one_size(n_labeled: int, n_pool: int, args) -> dict:
    """A real `pseudo run` at one size in a child process: per stage seconds, peak RSS, disk."""
    work = Path(args.work) / f"size-{n_labeled}-{n_pool}"
    shutil.rmtree(work, ignore_errors=True)
    inputs = write_inputs(work / "data", n_labeled, args)
    run_dir = work / "run"
    command = [sys.executable, "-m", "pseudolabel", "run", "--train", inputs["train"], "--test", inputs["test"],
               "--unlabeled", args.unlabeled, "--unlabeled-limit", str(n_pool), "--encoder", args.encoder,
               "--rounds", str(args.rounds), "--max-len", str(args.max_len), "--run-dir", str(run_dir)] + (["--force"] if args.force else []) + args.run_options.split()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}
    if args.threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS="1")
    started = time.time()
    with open(work / "run.log", "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.time() - started
    text = (work / "run.log").read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{work / 'run.log'}: the run at {n_labeled}:{n_pool} failed:\n{text[-2000:]}")
    out = {"labeled": n_labeled, "pool": n_pool, "test": test_rows(n_labeled, args), "wall": wall,
           "peak_rss_mib": usage.ru_maxrss / 1024}
    out["disk"], out["features_disk"] = run_disk(run_dir)
    for split, _, seconds in ENCODED.findall(text):
        out[f"features {split}"] = out.get(f"features {split}", 0.0) + float(seconds)
    for k in range(args.rounds + 1):
        if not (run_dir / f"round_{k}" / "metrics.json").exists():
            raise SystemExit(f"{work / 'run.log'}: the run at {n_labeled}:{n_pool} stopped before round {k}")
        metrics = json.loads((run_dir / f"round_{k}" / "metrics.json").read_text())
        seconds = metrics["seconds"]
        name = "round 0" if k == 0 else "later rounds"
        for part in ("train", "score"):
            out[f"{name} {part}"] = out.get(f"{name} {part}", 0.0) + seconds[part]
    return out


# stage -> the rows it handles at a size (what its growth exponent is fitted against)
STAGES = {
    "features labeled": lambda r: r["labeled"],
    "features test": lambda r: r["test"],
    "features unlabeled": lambda r: r["pool"],
    "round 0 train": lambda r: r["labeled"],
    "round 0 score": lambda r: r["test"] + r["pool"],
    "later rounds train": lambda r: r["labeled"],
    "later rounds score": lambda r: r["test"] + r["pool"],
    "the rest (selection, co-teacher, delivery)": lambda r: r["labeled"] + r["pool"],
    "whole run": lambda r: r["labeled"] + r["test"] + r["pool"],
    "peak RSS": lambda r: r["labeled"] + r["test"] + r["pool"],
    "disk": lambda r: r["labeled"] + r["test"] + r["pool"],
}


def stage_value(r: dict, stage: str) -> float:
    if stage == "the rest (selection, co-teacher, delivery)":
        timed = sum(v for k, v in r.items() if k.startswith(("features ", "round 0 ", "later rounds ")))
        return max(r["wall"] - timed, 1e-3)
    return {"whole run": r["wall"], "peak RSS": r["peak_rss_mib"], "disk": r["disk"]}.get(stage, r.get(stage, 0.0))


def exponent(sizes: list[float], values: list[float]) -> float:
    """b of values ~ sizes^b, least squares on log-log."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)[0])


def growth_table(results: list[dict]) -> list[str]:
    head = " | ".join(f"{r['labeled']:,} : {r['pool']:,}" for r in results)
    lines = [f"| stage (labeled : pool) | {head} | growth exponent |", "|---" * (len(results) + 2) + "|"]
    for stage, size in STAGES.items():
        values = [stage_value(r, stage) for r in results]
        if not any(values):
            continue
        unit = {"peak RSS": " MiB", "disk": ""}.get(stage, " s")
        if stage == "disk":
            from pseudolabel.encoding.features import human_bytes
            cells = [human_bytes(v) for v in values]
        else:
            cells = [f"{v:,.1f}{unit}" for v in values]
        b = f"{exponent([size(r) for r in results], values):.2f}" if len(results) > 1 else "–"  # one size: none
        lines.append(f"| {stage} | {' | '.join(cells)} | {b} |")
    ratios = [r["wall"] / (r["round 0 train"] + r["round 0 score"]) for r in results]
    lines.append(f"| whole run ÷ round 0 | {' | '.join(f'{v:.2f}×' for v in ratios)} | – |")
    return lines


def base_costs(args):
    """Seconds per post of the frozen encoder and the head at the shape of bert-base (random weights)."""
    from pseudolabel.data.posts import load_unlabeled
    from pseudolabel.encoding.encoder import find_encoder, save_random_encoder
    from pseudolabel.rounds.config import RunConfig
    from pseudolabel.rounds.plan import measure_costs

    layers, hidden = (int(x) for x in args.base_shape.split(":"))
    heads = max(1, hidden // 64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bert-base-shape"
        save_random_encoder(folder, args.vocab, layers=layers, hidden=hidden, heads=heads, intermediate=4 * hidden,
                            max_positions=512, seed=0)
        config = RunConfig(train=args.train, test=None, unlabeled=None, encoder=str(folder), run_dir=tmp,
                           rounds=2, max_len=args.base_len)
        config.resolve_student(args.project_labeled)  # the student's steps are timed where it would train
        texts = load_unlabeled(args.unlabeled, args.base_posts).texts
        costs = measure_costs(config, find_encoder(str(folder)), list(texts), config.resolved_recipe(),
                              batches=max(1, args.base_posts // 32 - 1))
    return costs, layers, hidden


def projection(costs, hidden: int, args) -> list[dict]:
    """--plan's estimate for the projected size with the run's defaults (`rounds.plan.estimate`)."""
    from pseudolabel.rounds.config import RunConfig
    from pseudolabel.rounds.cv import make_folds
    from pseudolabel.rounds.plan import estimate

    n_rows = {"labeled": args.project_labeled, "test": args.project_test, "unlabeled": args.project_pool}
    labels = np.arange(n_rows["labeled"]) % 3  # only the folds' sizes matter to the estimate
    config = RunConfig(train=args.train, test=None, unlabeled=None, encoder=args.encoder, run_dir="",
                       rounds=2, max_len=args.base_len)
    config.resolve_student(n_rows["labeled"])
    return estimate(config, costs, n_rows, make_folds(labels, config.folds, config.holdout, config.seed), hidden)


def projection_table(cpu_rows, gpu_rows) -> list[str]:
    lines = ["| stage | rows | disk | this CPU (measured costs) | one GPU (assumed rates) |", "|---|---|---|---|---|"]
    for cpu, gpu in zip(cpu_rows, gpu_rows):
        lines.append(f"| {cpu['stage']} | {cpu['rows']} | {cpu['disk']} | {hours(cpu['seconds'])} | "
                     f"{hours(gpu['seconds'])} |")
    total_cpu = sum(r["seconds"] or 0 for r in cpu_rows)
    total_gpu = sum(r["seconds"] or 0 for r in gpu_rows)
    lines.append(f"| total | | | ≤ {hours(total_cpu)} | ≤ {hours(total_gpu)} |")
    return lines


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "not estimated"
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000:2000,2000:10000,4000:50000,8000:200000",
                        help="labeled:pool pairs, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads of each run (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", default=str(SHARED / "smp_virus_train.labeled.csv"))
    parser.add_argument("--test", default=str(SHARED / "nCov_10k_test.csv"))
    parser.add_argument("--unlabeled", default=str(SHARED / "covid_weibo_200k.unlabeled.csv"))
    parser.add_argument("--vocab", default=str(SHARED / "bert-base-chinese-vocab.txt"))
    parser.add_argument("--encoder", default=str(ROOT / "models" / "weibo-mlm-4l256"))
    parser.add_argument("--base-shape", default="12:768", help="layers:hidden of the per-post cost's encoder")
    parser.add_argument("--base-len", type=int, default=140, help="max length of the per-post cost and projection")
    parser.add_argument("--base-posts", type=int, default=256, help="posts the per-post costs are timed on")
    parser.add_argument("--project-labeled", type=int, default=100_000)
    parser.add_argument("--project-test", type=int, default=10_000)
    parser.add_argument("--project-pool", type=int, default=500_000)
    parser.add_argument("--work", default=str(ROOT / "runs" / ".scale"))
    parser.add_argument("--run-options", default="", help="more options of each `pseudo run` (smoke runs: "
                        "'--epochs 1 --min-steps 0 --folds 2')")
    parser.add_argument("--force", action="store_true",
                        help="select pseudo-labels even from a collapsed round (smoke runs at tiny sizes)")
    parser.add_argument("--skip-growth", action="store_true", help="only the per-post costs and the projection")
    parser.add_argument("--skip-costs", action="store_true", help="only the growth runs")
    parser.add_argument("--test-rows", type=int, default=0, help="rows of the test file each run scores (0: a "
                        "tenth of its labeled posts)")
    args = parser.parse_args()
    if args.threads:
        os.environ.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS="1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, threads {args.threads or 'all'}; encoder "
          f"{args.encoder}; max length {args.max_len}; pseudo run --rounds {args.rounds} with the defaults\n")
    if not args.skip_growth:
        results = []
        for n_labeled, n_pool in parse_sizes(args.sizes):
            results.append(one_size(n_labeled, n_pool, args))
            print(f"size {n_labeled:,} : {n_pool:,} done in {results[-1]['wall']:.0f} s", file=sys.stderr)
        print("## Growth (seconds per stage, peak RSS, disk; exponent b of value ~ rows^b)\n")
        print("\n".join(growth_table(results)) + "\n")

    if args.skip_costs:
        return
    costs, layers, hidden = base_costs(args)
    print(f"## Per-post cost at {layers} layers, hidden {hidden}, length {args.base_len} (random weights, this CPU)\n")
    print("| step | seconds per post | posts per second |\n|---|---|---|")
    what = {"encode": "frozen encoder", "train": "head", "score": "head", "tune": "fine-tuned student",
            "tune_score": "fine-tuned student"}
    for name, role in what.items():
        value = getattr(costs, name)
        if value is not None:
            print(f"| {name} ({role}) | {value:.5f} | {1 / value:,.1f} |")
    if costs.tune_setup is not None:
        print(f"\nThe student's setup (built, steps traced): {costs.tune_setup:.0f} s a fold.")
    from pseudolabel.rounds.plan import Costs

    gpu = Costs(**{k: 1.0 / v for k, v in GPU_RATES.items()}, tune_setup=GPU_STUDENT_SETUP)
    cpu_rows, gpu_rows = projection(costs, hidden, args), projection(gpu, hidden, args)
    print(f"\n## Projection: {args.project_labeled:,} labeled / {args.project_test:,} test / {args.project_pool:,} "
          f"pool, `pseudo run --rounds 2`, defaults, {layers} layers hidden {hidden}, length {args.base_len}\n")
    print("GPU rates assumed (posts/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in GPU_RATES.items()) + "\n")
    print("\n".join(projection_table(cpu_rows, gpu_rows)))


if __name__ == "__main__":
    main()
