"""`pseudo run --plan`: what a run will cost before anything trains, from this machine's measured cost per post.

It reads the inputs and the encoder as a run does (the same checks, nothing written), times a few warm
batches of the frozen encoder and of the recipe's head (training and scoring, with random weights and
inputs of the run's shape) and, where a round fine-tunes the encoder, of the student (training and scoring
steps on the sampled posts), and multiplies: rows per split and the feature cache's disk; per round the
rows each fold trains on per epoch (round 0: the fold's human-labeled part; later rounds: that plus the
training budget's sample of the selection, `--pseudo-ratio`), the epochs the recipe (or `--finetune-epochs`)
runs at most (early stopping may end a fold sooner, so times are upper bounds), and the rows every fold
scores.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from .config import RunConfig
from .costs import Costs, length_share, round_work, selection_bound, student_work
from ..data.posts import load_labeled, load_unlabeled
from ..encoding.encoder import find_encoder, load_tokenizer, quiet_transformers
from ..encoding.features import human_bytes
from .cv import make_folds
from .loop import check_inputs, student_recipe
from ..data.tokenize import tokenize

WARM_ROWS = 32  # rows per timed batch
TIMED_BATCHES = 3  # timed after one warm-up batch
LENGTH_SAMPLE = 2000  # labeled posts whose token counts say what length-grouped batches cost


def _timed(step, batches: int = TIMED_BATCHES, warm: bool = True) -> float:
    if warm:
        step()  # warm-up: tracing and first allocations
    started = time.perf_counter()
    for _ in range(batches):
        step()
    return (time.perf_counter() - started) / batches


def measure_costs(config: RunConfig, files, texts: list[str], recipe, batches: int = TIMED_BATCHES) -> Costs:
    """Time the encoder on `texts` (a sample of the run's posts, `batches` + 1 batches of them where there are
    that many) and the head on random inputs of its shape."""
    from ..core._tf import keras
    from ..encoding.encoder import FrozenEncoder
    from ..heads.model import build_head

    tokens = tokenize(texts[:WARM_ROWS * (batches + 1)], load_tokenizer(files), config.max_len)
    encoder = FrozenEncoder(files)
    parts = itertools.cycle([slice(start, start + WARM_ROWS) for start in range(0, len(tokens), WARM_ROWS)])

    def encode_batch() -> int:
        part = next(parts)
        encoder(tokens.input_ids[part], tokens.attention_mask[part])
        return len(tokens.input_ids[part])

    encode_batch()  # warm-up
    started, n_posts = time.perf_counter(), sum(encode_batch() for _ in range(batches))
    encode = (time.perf_counter() - started) / n_posts
    model = build_head(config.max_len, encoder.hidden_size, recipe)
    rng = np.random.default_rng(0)
    batch = recipe.batch_size
    shapes = [[config.max_len if d is None else int(d) for d in t.shape[1:]] for t in model.inputs]
    inputs = [rng.standard_normal((batch, *shape)).astype(np.float32) for shape in shapes]
    x = inputs[0] if len(inputs) == 1 else inputs
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, batch)]
    train = _timed(lambda: model.train_on_batch(x, y), batches) / batch
    score = _timed(lambda: model.predict_on_batch(x), batches) / batch
    sampler = mc_sampler(config, recipe, model)
    mc = _timed(lambda: sampler(x), batches) / batch if sampler else 0.0
    keras.backend.clear_session()
    tuned = [k for k in range(config.rounds + 1) if config.trainer(k) == "finetune"]
    student = measure_student(config, files, tokens, tuned[0], batches) if tuned else (None, None, None)
    return Costs(encode, train, score, *student, mc=mc)


def mc_sampler(config: RunConfig, recipe, model):
    """With --mc-passes T: a function of a batch that runs the T passes as `cv.mc_moments` does (the head's part
    before its first dropout once, the rest T times; `model`'s weights); else None."""
    from ..heads.model import build_head, mc_parts, mc_sample

    if not config.mc_passes:
        return None
    mc = build_head(config.max_len, model.inputs[0].shape[-1], recipe, compile=False, mc_dropout=True)
    mc.set_weights(model.get_weights())
    parts = mc_parts(mc)
    return lambda x: mc_sample(parts, x, config.mc_passes)


def measure_student(config: RunConfig, files, tokens, k: int,
                    batches: int = TIMED_BATCHES) -> tuple[float, float, float]:
    """Round k's fine-tuned student on full-length batches of the sampled posts: seconds to build it and trace
    its steps (once per fold), and seconds per post of a training step and of scoring."""
    from ..core._tf import keras
    from ..heads.finetune import Student

    rows = np.arange(min(WARM_ROWS, len(tokens)))
    ids, mask = tokens.input_ids[rows], tokens.attention_mask[rows].astype(np.int32)
    targets = np.eye(3, dtype=np.float32)[np.arange(len(rows)) % 3]
    weights = np.ones(len(rows), np.float32)
    started = time.perf_counter()
    student = Student(files, config.finetune(k), steps=batches + 1, seed=0)
    student.train_on(ids, mask, targets, weights)
    student.predict_step(ids, mask).numpy()
    setup = time.perf_counter() - started
    tune = _timed(lambda: student.train_on(ids, mask, targets, weights), batches, warm=False) / len(rows)
    tune_score = _timed(lambda: student.predict_step(ids, mask).numpy(), batches, warm=False) / len(rows)
    keras.backend.clear_session()
    return setup, tune, tune_score


def estimate(config: RunConfig, costs: Costs, n_rows: dict, folds: np.ndarray, hidden: int,
             share: float = 1.0) -> list[dict]:
    """One row per stage: what it handles, its disk and its estimated seconds (`share`: what a step of
    length-grouped batches costs against a full-length one, `costs.length_share`)."""
    recipe0 = config.resolved_recipe()
    out = []
    cached = [s for s in ("labeled", "test", "unlabeled") if n_rows[s] and s not in config.stream]
    frozen = not config.fine_tunes_throughout()  # a run fine-tuned in every round reads no frozen features
    for split in ("labeled", "test", "unlabeled"):
        if n_rows[split] and frozen:
            disk = n_rows[split] * config.max_len * hidden * 2 if split in cached else 0
            out.append({"stage": f"features: {split}", "rows": f"{n_rows[split]:,}",
                        "disk": human_bytes(disk) if disk else "streamed", "seconds": n_rows[split] * costs.encode})
    n_folds = int(folds.max()) + 1
    bound = selection_bound(config, n_rows["unlabeled"])
    for k in range(config.rounds + 1):
        tuned = config.trainer(k) == "finetune"
        if config.mode == "faithful":
            out.append({"stage": f"round {k}", "rows": "faithful mode: not estimated", "disk": "", "seconds": None})
            continue
        work = (student_work(config, k, costs, n_rows, folds, share) if tuned
                else round_work(config, student_recipe(recipe0, config, k), k, costs, n_rows, folds, share))
        per_epoch, epochs = work.per_epoch, work.epochs
        trains = f"{min(per_epoch):,}–{max(per_epoch):,}" if min(per_epoch) != max(per_epoch) else f"{per_epoch[0]:,}"
        selected = "" if k == 0 else f", selection ≤ {bound:,} per fold"
        shown = ("fine-tuned student: " if k else "fine-tuned encoder: ") if tuned else ""
        out.append({"stage": f"round {k}", "disk": "", "seconds": sum(work.seconds),
                    "rows": f"{shown}{n_folds} folds × ≤ {max(epochs)} epochs × {trains} rows{selected}"})
    return out


def plan_run(config: RunConfig, progress) -> tuple[list[dict], Costs]:
    """Read the run's inputs (checked as a run checks them), measure this machine and estimate each stage."""
    config.validate()
    quiet_transformers()
    files = find_encoder(config.encoder)
    labeled = load_labeled(config.train)
    config.resolve_student(len(labeled))
    test = load_unlabeled(config.test, None) if config.test else None
    pool = load_unlabeled(config.unlabeled, config.unlabeled_limit) if config.unlabeled else None
    for posts in (labeled, test, pool):
        for line in posts.notes() if posts is not None else []:
            progress.note(line)
    check_inputs(config, files, labeled.labels)
    n_rows = {"labeled": len(labeled), "test": len(test) if test else 0, "unlabeled": len(pool) if pool else 0}
    folds = make_folds(labeled.labels, config.folds, config.holdout, config.seed)
    sample = (pool or labeled).texts
    costs = measure_costs(config, files, list(sample), config.resolved_recipe())
    hidden = int(files.config_dict().get("hidden_size", 0))
    lengths = tokenize(list(labeled.texts[:LENGTH_SAMPLE]), load_tokenizer(files), config.max_len).lengths
    return estimate(config, costs, n_rows, folds, hidden, length_share(lengths, config.max_len)), costs
