"""Speed: `pseudo` rounds against the reference protocol, on the same posts and the same encoder.

    python benchmarks/round_speed.py                 # defaults finish in about 10 minutes on 2 cores
    python benchmarks/round_speed.py --reference-round1   # also (a1), which takes about 1.3x as long as (a)
    python benchmarks/round_speed.py --labeled 300 --test 100 --unlabeled 300 --layers 2   # a quick look

In one process, one after the other, with a random-weight BERT of a stated size built here:
  (a) the reference protocol: per-row `encode_plus` tokenization and the `faithful` mode (encoder inside
      the Keras graph, recomputed for every fold, epoch and prediction), round 0;
  (b) `pseudo` round 0 in `cached` mode from a cold cache;
  (c) one `pseudo` pseudo-label round on top of (b);
  (a1) with --reference-round1, the reference protocol's own pseudo-label round on top of (a): as many
       pseudo-labeled posts per fold as (c) trains on, the encoder again in the graph (what the reference
       pays every round).
All use the reference head (`--recipe seed`) so that the head work is the same. It prints wall seconds,
the ratios (a)/(b), (a)/(c) and (a1)/(c) (like for like: one pseudo-label round each), tokenization
throughput three ways (per-row encode_plus, the fast tokenizer on whole batches, pseudo's `tokenize`) on
posts of the shared pool, encoder passes per text (counted by the encoder and by a counter inside the
faithful graph), and peak RSS (also of scoring a pool from the feature cache, measured in fresh child
processes at the --score-rows sizes). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


SHARED_POOL = ROOT.parent / "shared" / "data" / "covid_weibo_200k.unlabeled.csv"


def peak_rss_mib() -> float:
    """Peak resident memory since the last `reset_peak_rss` (Linux), else since the process started.

    A child process's getrusage peak also counts the parent's memory it shared right after the fork,
    so the scoring children reset the peak first."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def write_csv(path: Path, ids, texts, labels=None) -> Path:
    from pseudolabel.core.store import atomic_write_csv

    header = ["微博id", "微博发布时间", "发布人账号", "微博中文内容", "微博图片", "微博视频"]
    rows = [[i, "", "", t, "", ""] for i, t in zip(ids, texts)]
    if labels is not None:
        header.append("情感倾向")
        rows = [r + [str(int(y) - 1)] for r, y in zip(rows, labels)]
    atomic_write_csv(path, header, rows)
    return path


def score_child(folder: str, heads_dir: str, rows: int, hidden: int, max_len: int, queue) -> None:
    """In a fresh process: score `rows` cached pool rows with every fold head; report time and peak RSS."""
    from pseudolabel.rounds.cv import FeatureSource, FoldHeads, predict
    from pseudolabel.encoding.features import CachedFeatures
    from pseudolabel.heads.model import RECIPES, build_head
    from pseudolabel.core.progress import Progress

    reset = reset_peak_rss()
    feats = CachedFeatures(Path(folder))
    heads = FoldHeads.load(build_head(max_len, hidden, RECIPES["seed"], compile=False),
                           sorted(Path(heads_dir).glob("fold_*/head.weights.h5")))
    before = rss_mib()
    started = time.time()
    out = predict(heads, FeatureSource(feats), Progress(), "score", np.arange(rows))
    queue.put({"rows": rows, "heads": len(heads), "seconds": time.time() - started, "rss_before_mib": before,
               "peak_rss_mib": peak_rss_mib(), "peak_reset": reset, "shape": list(out.shape)})


def synthetic_cache(folder: Path, rows: int, max_len: int, hidden: int, seed: int = 0) -> Path:
    """A feature cache of `rows` random rows (for the memory measurement only), written in chunks."""
    folder.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16,
                                    shape=(rows, max_len, hidden))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 2048):
        stop = min(rows, start + 2048)
        out[start:stop] = rng.normal(size=(stop - start, max_len, hidden)).astype(np.float16)
    out.flush()
    del out
    np.save(folder / "lengths.npy", np.full(rows, max_len // 2, np.int32), allow_pickle=False)
    (folder / "DONE").write_text("ok\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=str(ROOT / "data" / "train.labeled.csv"))
    parser.add_argument("--pool", default=str(ROOT / "data" / "unlabeled.csv"))
    parser.add_argument("--test-file", default=str(ROOT / "data" / "test.csv"))
    parser.add_argument("--labeled", type=int, default=500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--unlabeled", type=int, default=400)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of every run")
    parser.add_argument("--score-rows", default="2000,8000", help="pool sizes for the scoring-memory check")
    parser.add_argument("--tokenize-file", default=str(SHARED_POOL if SHARED_POOL.exists() else ROOT / "data" / "unlabeled.csv"),
                        help="posts for the tokenization throughput (default: the shared 200k pool if present)")
    parser.add_argument("--tokenize-rows", type=int, default=20000)
    parser.add_argument("--skip-reference", action="store_true", help="only (b) and (c)")
    parser.add_argument("--reference-round1", action="store_true",
                        help="also time (a1), the reference protocol's own pseudo-label round")
    args = parser.parse_args()

    from pseudolabel.data.posts import load_labeled, load_unlabeled
    from pseudolabel.encoding.encoder import find_encoder, load_tokenizer, quiet_transformers, save_random_encoder
    from pseudolabel.rounds.loop import Run, RunConfig
    from pseudolabel.heads.model import faithful_encoder_rows
    from pseudolabel.core.progress import Progress
    from pseudolabel.data.tokenize import tokenize

    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix="round-speed-"))
    vocab = ROOT / "models" / "bert-mini-random" / "vocab.txt"
    enc_dir = work / "encoder"
    save_random_encoder(enc_dir, vocab, layers=args.layers, hidden=args.hidden, heads=args.heads,
                        intermediate=args.intermediate, max_positions=512, seed=0)
    files = find_encoder(enc_dir)

    labeled = load_labeled(args.train)
    keep = np.sort(np.random.default_rng(0).permutation(len(labeled))[: args.labeled])
    pool = load_unlabeled(args.pool, args.unlabeled)
    test = load_unlabeled(args.test_file, args.test)
    paths = {
        "train": write_csv(work / "train.csv", [labeled.ids[i] for i in keep], [labeled.texts[i] for i in keep],
                           labeled.labels[keep]),
        "unlabeled": write_csv(work / "pool.csv", pool.ids, pool.texts),
        "test": write_csv(work / "test.csv", test.ids, test.texts),
    }
    texts = [labeled.texts[i] for i in keep] + test.texts + pool.texts
    distinct = len(set([labeled.texts[i] for i in keep])) + len(set(test.texts)) + len(set(pool.texts))

    # tokenization: the script's per-row encode_plus (BertTokenizer) against the fast tokenizer called on whole
    # batches and against pseudo's `tokenize` (segments), each from a fresh tokenizer, on the same posts
    from transformers import BertTokenizer

    tok_texts = load_unlabeled(args.tokenize_file, args.tokenize_rows).texts
    slow = BertTokenizer(vocab_file=str(files.vocab))
    t = time.time()
    for text in tok_texts:
        slow.encode_plus(text, max_length=args.max_len, padding="max_length", truncation=True)
    per_row_s = time.time() - t
    fast = load_tokenizer(files)
    t = time.time()
    for start in range(0, len(tok_texts), 4096):
        fast(tok_texts[start:start + 4096], max_length=args.max_len, padding="max_length", truncation=True,
             return_tensors="np")
    whole_s = time.time() - t
    t = time.time()
    tokenize(tok_texts, load_tokenizer(files), args.max_len)
    batch_s = time.time() - t
    rates = {"per-row": len(tok_texts) / per_row_s, "whole": len(tok_texts) / whole_s,
             "segments": len(tok_texts) / batch_s}
    per_row_s = len(texts) / rates["per-row"]  # the reference's tokenization time for this run's texts

    def config(run_dir, mode, rounds):
        return RunConfig(train=str(paths["train"]), test=str(paths["test"]), unlabeled=str(paths["unlabeled"]),
                         encoder=str(enc_dir), run_dir=str(run_dir), rounds=rounds, recipe="seed", mode=mode,
                         max_len=args.max_len, folds=args.folds, strategy="top-k", top_k=len(pool) // 4, holdout=0.0,
                         co_teacher=0.0, force=True)

    results = {}
    if not args.skip_reference:
        t = time.time()
        Run(config(work / "faithful", "faithful", 0), Progress()).execute()
        results["a"] = time.time() - t + per_row_s
        results["a_passes"] = faithful_encoder_rows() / len(texts)
        print(f"(a) reference round 0: {results['a']:.1f}s", flush=True)
        if args.reference_round1:
            before = faithful_encoder_rows()
            t = time.time()
            ref1 = Run(config(work / "faithful", "faithful", 1), Progress()).execute()
            # the reference's next-round script tokenizes every text per row again
            results["a1"] = time.time() - t + per_row_s
            results["a1_passes"] = (faithful_encoder_rows() - before) / len(texts)
            results["a1_pseudo"] = ref1.rounds[-1]["n_pseudo"]
            print(f"(a1) reference pseudo-label round: {results['a1']:.1f}s", flush=True)

    t = time.time()
    first = Run(config(work / "cached", "cached", 0), Progress()).execute()
    results["b"] = time.time() - t
    print(f"(b) cached round 0: {results['b']:.1f}s", flush=True)
    t = time.time()
    second = Run(config(work / "cached", "cached", 1), Progress()).execute()
    results["c"] = time.time() - t
    print(f"(c) pseudo-label round: {results['c']:.1f}s", flush=True)
    n_pseudo = second.rounds[-1]["n_pseudo"]
    encoder_rows = first.encoder_rows + second.encoder_rows
    seconds = {k: v for k, v in second.rounds[-1]["seconds"].items()}

    # scoring memory: peak RSS of a fresh process scoring the pool from the cache, at two pool sizes
    scoring = []
    ctx = mp.get_context("spawn")
    for rows in [int(x) for x in args.score_rows.split(",") if x]:
        folder = synthetic_cache(work / f"pool-{rows}", rows, args.max_len, args.hidden)
        queue = ctx.Queue()
        child = ctx.Process(target=score_child, args=(str(folder), str(work / "cached" / "round_0"), rows,
                                                      args.hidden, args.max_len, queue))
        child.start()
        scoring.append(queue.get())
        child.join()

    print(f"\nround speed · {platform.machine()}, {os.cpu_count()} cores · encoder: random BERT, {args.layers} layers, "
          f"hidden {args.hidden}, {args.heads} heads, intermediate {args.intermediate}, max_len {args.max_len} · "
          f"{len(keep)} labeled, {len(test)} test, {len(pool)} unlabeled posts · recipe seed, {args.folds} folds")
    base = rates["per-row"]
    print(f"tokenization of {len(tok_texts):,} posts ({args.tokenize_file}): per-row BertTokenizer.encode_plus "
          f"{base:,.0f} texts/s; fast tokenizer on whole batches {rates['whole']:,.0f} texts/s "
          f"({rates['whole'] / base:.1f}x); pseudo tokenize (segments) {rates['segments']:,.0f} texts/s "
          f"({rates['segments'] / base:.1f}x)")
    if "a" in results:
        print(f"(a) reference round 0 (per-row tokenization + faithful): {results['a']:.1f}s, "
              f"encoder passes per text {results['a_passes']:.2f} (counted in the graph)")
    print(f"(b) pseudo round 0, cached, cold cache: {results['b']:.1f}s")
    print(f"(c) pseudo pseudo-label round: {results['c']:.1f}s (train {seconds['train']:.1f}s, "
          f"score {seconds['score']:.1f}s), {n_pseudo} pseudo-labeled posts per fold")
    if "a1" in results:
        print(f"(a1) reference pseudo-label round (per-row tokenization + faithful): {results['a1']:.1f}s, "
              f"encoder passes per text {results['a1_passes']:.2f}, {results['a1_pseudo']} pseudo-labeled posts "
              f"per fold")
    if "a" in results:
        print(f"ratio (a)/(b) = {results['a'] / results['b']:.2f}x, (a)/(c) = {results['a'] / results['c']:.2f}x"
              + (f", (a1)/(c) = {results['a1'] / results['c']:.2f}x" if "a1" in results else ""))
    print(f"encoder passes per distinct text over rounds 0 and 1: {encoder_rows / distinct:.2f} "
          f"({encoder_rows} texts encoded, {distinct} distinct)")
    print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    for s in scoring:
        since = "the child's start" if s["peak_reset"] else "the fork (includes memory shared with this process)"
        print(f"scoring {s['rows']:,} cached pool rows with {s['heads']} heads: {s['seconds']:.1f}s, peak RSS "
              f"{s['peak_rss_mib']:,.0f} MiB since {since} (RSS with the heads loaded, before scoring: "
              f"{s['rss_before_mib']:,.0f} MiB)")


if __name__ == "__main__":
    main()
