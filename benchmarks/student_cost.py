"""What a fine-tuned student costs on this machine: training and scoring throughput of `--student
finetune` by max length, trained layers and precision, beside the frozen encoder's feature pass (what a head round
costs instead), measured in one run on the same posts.

    python benchmarks/student_cost.py                       # bundled encoder, 1,024 posts of the shared train set
    python benchmarks/student_cost.py --max-lens 64 --layers 0 --precisions float32,mixed_bfloat16

Each setting builds a real `finetune.Student`, trains one epoch over the posts (length-grouped batches of
32 cut to their longest post, as a fold does) after a warm-up batch per shape, then scores them; it prints
posts per second and the ratio to the frozen feature pass at the same max length. Not part of the suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pseudolabel.data.batching import length_grouped, padded_length  # noqa: E402
from pseudolabel.core.constants import N_CLASSES  # noqa: E402
from pseudolabel.data.posts import load_labeled  # noqa: E402
from pseudolabel.encoding.encoder import FrozenEncoder, find_encoder, load_tokenizer  # noqa: E402
from pseudolabel.heads.finetune import PRECISIONS, FineTune, Student  # noqa: E402
from pseudolabel.data.tokenize import tokenize  # noqa: E402

BATCH = 32


def batches(tokens, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for rows in length_grouped(tokens.lengths, BATCH, rng):
        cut = padded_length(tokens.lengths[rows].max(), tokens.input_ids.shape[1])
        out.append((tokens.input_ids[rows, :cut], tokens.attention_mask[rows, :cut].astype(np.int32)))
    return out


def warm(step, shapes) -> None:
    """Trace every batch shape once before timing (a fold pays this once per shape, too)."""
    for ids, mask in shapes.values():
        step(ids, mask)


def frozen_rate(files, tokens, rng) -> float:
    encoder = FrozenEncoder(files)
    work = batches(tokens, rng)
    warm(encoder, {ids.shape[1]: (ids, mask) for ids, mask in work})
    started = time.perf_counter()
    for ids, mask in work:
        encoder(ids, mask)
    return len(tokens) / (time.perf_counter() - started)


def student_rates(files, tokens, layers: int, precision: str, rng) -> tuple[float, float]:
    work = batches(tokens, rng)
    student = Student(files, FineTune(layers=layers, precision=precision), steps=2 * len(work), seed=0)
    targets = np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, BATCH)]
    weights = np.ones(BATCH, np.float32)

    def train(ids, mask):
        n = len(ids)
        return student.train_on(ids, mask, targets[:n], weights[:n])

    warm(train, {ids.shape[1]: (ids, mask) for ids, mask in work})
    started = time.perf_counter()
    for ids, mask in work:
        train(ids, mask)
    train_rate = len(tokens) / (time.perf_counter() - started)
    student.predict(tokens, np.arange(min(len(tokens), 256)))  # traces the scoring shapes
    started = time.perf_counter()
    student.predict(tokens, np.arange(len(tokens)))
    return train_rate, len(tokens) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="../shared/data/smp_virus_train.labeled.csv")
    parser.add_argument("--encoder", default="models/weibo-mlm-4l256")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--max-lens", default="64,140")
    parser.add_argument("--layers", default="0,2", help="trained layers per setting (0: all and the embeddings)")
    parser.add_argument("--precisions", default="float32", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    args = parser.parse_args()

    files = find_encoder(args.encoder)
    posts = load_labeled(args.train)
    rng = np.random.default_rng(0)
    texts = [posts.texts[i] for i in np.sort(rng.choice(len(posts.texts), args.rows, replace=False))]
    tokenizer = load_tokenizer(files)
    started = time.time()
    rows = []
    for max_len in [int(v) for v in args.max_lens.split(",")]:
        tokens = tokenize(texts, tokenizer, max_len)
        frozen = frozen_rate(files, tokens, np.random.default_rng(1))
        rows.append((max_len, "frozen feature pass (head rounds)", frozen, None, float(tokens.lengths.mean())))
        for layers in [int(v) for v in args.layers.split(",")]:
            for precision in args.precisions.split(","):
                train, score = student_rates(files, tokens, layers, precision, np.random.default_rng(1))
                rows.append((max_len, f"student, {'all layers' if not layers else f'top {layers} layers'}, "
                             f"{precision}", train, score, float(tokens.lengths.mean())))
    print(f"\nstudent cost · {args.encoder} · {args.rows} posts of {args.train} · batches of {BATCH} cut to their "
          f"longest post · {platform.machine()}, {os.cpu_count()} cores · {time.time() - started:.0f}s")
    print("| max length | mean tokens | what | train posts/s | score posts/s | frozen pass ÷ train |")
    print("|---|---|---|---|---|---|")
    frozen = {}
    for max_len, what, first, score, mean_len in rows:
        if score is None:
            frozen[max_len] = first
            print(f"| {max_len} | {mean_len:.0f} | {what} | | {first:.0f} | 1.0 |")
        else:
            ratio = frozen[max_len] / first
            print(f"| {max_len} | {mean_len:.0f} | {what} | {first:.0f} | {score:.0f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
