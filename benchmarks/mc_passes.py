"""Cost of MC-dropout passes (`pseudo run --mc-passes T`): the whole head each pass against the head's
part before its first dropout once a batch and only the rest each pass (`heads.model.mc_parts`).

    python benchmarks/mc_passes.py                      # 2,000 posts, length 140, hidden 256, 10 passes
    python benchmarks/mc_passes.py --posts 500 --passes 4 --threads 1

One process, one head of the default recipe on random features of the bundled encoder's width (the time does
not depend on the values), one fold's worth of scoring in the chunks `predict` uses: a plain scoring pass, T
passes of the whole head, and T passes through `mc_parts`, each timed after one warm-up chunk; it prints the
seconds, the ratios, and the largest difference between the two ways' moments (the same random streams: 0).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=140)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: its own choice)")
    args = parser.parse_args()

    from pseudolabel.core._tf import tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from pseudolabel.heads.model import build_head, mc_parts, mc_sample, recipe, reset_random_layers
    from pseudolabel.rounds.cv import PREDICT_CHUNK
    from pseudolabel.rounds.uncertainty import moments

    head_recipe = recipe(args.recipe)
    plain = build_head(args.max_len, args.hidden, head_recipe, compile=False)
    mc = build_head(args.max_len, args.hidden, head_recipe, compile=False, mc_dropout=True)
    mc.set_weights(plain.get_weights())
    trunk, tail = mc_parts(mc)
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(min(PREDICT_CHUNK, args.posts - at), args.max_len, args.hidden)).astype(np.float32)
              for at in range(0, args.posts, PREDICT_CHUNK)]

    def whole(x):
        return moments(np.stack([mc.predict_on_batch(x) for _ in range(args.passes)]))

    def split(x):
        return moments(mc_sample((trunk, tail), x, args.passes))

    def timed(fn):
        reset_random_layers(mc, 1)
        fn(chunks[0])  # traces the functions it calls
        reset_random_layers(mc, 1)
        started = time.perf_counter()
        out = [fn(x) for x in chunks]
        return time.perf_counter() - started, out

    plain_s, _ = timed(plain.predict_on_batch)
    whole_s, a = timed(whole)
    split_s, b = timed(split)
    gap = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    print(f"{platform.processor() or platform.machine()}, {args.posts} posts, length {args.max_len}, hidden "
          f"{args.hidden}, recipe {args.recipe}, {args.passes} passes, threads {args.threads or 'default'}")
    print(f"part before the first dropout: {'none' if trunk is None else trunk.layers[-1].name}")
    print("| what | seconds | × one scoring pass |")
    print("|---|---|---|")
    for name, s in (("one scoring pass (the head, inference)", plain_s),
                    (f"{args.passes} MC passes, the whole head each pass", whole_s),
                    (f"{args.passes} MC passes, the trunk once and the tail each pass", split_s)):
        print(f"| {name} | {s:.2f} | {s / plain_s:.2f} |")
    print(f"whole head / trunk once: {whole_s / split_s:.2f}x; largest difference between their moments: {gap:.1e}")


if __name__ == "__main__":
    main()
