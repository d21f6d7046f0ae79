"""Where a round's work runs: `--executor local` (`cv.LocalFolds`, one after another in this process) or
`--executor ray` (`RayFolds`: each fold a Ray task on a cluster, and the scoring of test, pool and holdout as
chunked tasks; `RayEncoder`: the frozen encoder's feature pass as tasks writing into the cache).

A round's folds are independent: each reads the run directory (cached features, the round's selection) and
writes its own fold folder with DONE last, seeded by itself (`cv.train_fold`), so where it runs does not
change its numbers; scoring and encoding tasks cut their rows as this process does, so theirs do not change
either. The driver (the `pseudo run` process) keeps the loop, the selection, the co-teacher and delivery; a
task gets the round's plan (arrays and file paths: features travel as their cache folder,
`CachedFeatures.__reduce__`) and returns the fold's record, its chunks' probabilities, or the rows it wrote.
A task whose worker dies is retried (Ray's task retries); a fold that was half-written has no DONE and is
trained again from its start.

Ray is imported only with `--executor ray` (`core.cluster`); it is an optional extra (`pip install -e ".[ray]"`).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.cluster import Cluster, thread_env
from ..core.errors import PseudoError
from ..core.progress import Progress
from .cv import RoundPlan, TrainingHeads, load_heads, score_chunk, score_chunks, score_source, train_one

PROBE = ".ray-probe"  # the run directory's folder where tasks prove they see the driver's files
RETRIES = 3  # attempts after the first for a fold whose worker died


def fold_task(plan: RoundPlan, fold: int) -> dict:
    """One fold in a Ray worker: trained as the local executor trains it, its folder written."""
    from ..core._tf import keras

    try:
        return train_one(plan, fold, Progress())
    finally:
        plan.heads.release()
        keras.backend.clear_session()


def score_task(plan: RoundPlan, name: str, chunks: list[np.ndarray]) -> np.ndarray:
    """Every fold head of the round on some chunks of one scoring job's rows, in a Ray worker, each chunk
    scored as `cv.predict` scores it: (folds, rows of the chunks in order, 3)."""
    from ..core._tf import keras

    try:
        heads, source = load_heads(plan), score_source(plan, name)
        return np.concatenate([score_chunk(heads, source, rows, plan.recipe.dynamic_padding) for rows in chunks],
                              axis=1)
    finally:
        keras.backend.clear_session()


def encode_task(files, features_path: str, offset: int, tokens, start: int) -> tuple[int, int]:
    """The frozen encoder over some rows of a split, in a Ray worker, written into the cache entry's
    features.npy at their place (`encoding.features.encode_rows`): (start, stop)."""
    from ..core._tf import keras
    from ..encoding.encoder import FrozenEncoder
    from ..encoding.features import encode_rows

    try:
        encode_rows(FrozenEncoder(files), tokens, Path(features_path), offset, start)
    finally:
        keras.backend.clear_session()
    return start, start + len(tokens)


def probe_task(run_dir: str, token: str) -> str:
    """Write `<run_dir>/.ray-probe/<token>` holding this node's id, from a worker."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    folder = Path(run_dir) / PROBE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / token).write_text(node)
    return node


def check_shared(run_dir: Path, wrote_on: str, token: str) -> None:
    """The driver reads the probe a task wrote; a one-line error says what is wrong otherwise."""
    path = Path(run_dir) / PROBE / token
    try:
        seen = path.read_text()
    except FileNotFoundError:
        raise PseudoError(f"{run_dir}: a Ray task on node {wrote_on[:12]} wrote {path.name} in it, and this process "
                          f"cannot read it: the run directory must be on storage every node mounts at the same "
                          f"path (e.g. NFS); see docs/scale-out.md") from None
    finally:
        path.unlink(missing_ok=True)
    if seen != wrote_on:
        raise PseudoError(f"{path}: holds {seen[:12]!r}, the task wrote {wrote_on[:12]!r}: another process writes "
                          f"the same run directory")


class RayFolds:
    """A round's folds as Ray tasks (`--executor ray`): `--fold-cpus` CPUs (one TensorFlow thread pool of that
    size) and `--fold-gpus` GPUs each. Connects to `address` (else `RAY_ADDRESS`), or starts a local Ray
    instance on 127.0.0.1 that `close` stops."""

    def __init__(self, run_dir: Path, address: str | None = None, fold_cpus: int = 1, fold_gpus: float = 0.0,
                 progress: Progress | None = None):
        self.cluster = Cluster(address, progress)
        self.ray, self.run_dir, self.progress = self.cluster.ray, Path(run_dir), progress or Progress()
        self.cluster.require(fold_cpus, fold_gpus, f"fold-cpus {fold_cpus} / fold-gpus {fold_gpus:g}")
        resources = self.cluster.resources
        shape = dict(num_cpus=fold_cpus, num_gpus=fold_gpus, max_retries=RETRIES, runtime_env=thread_env(fold_cpus))
        self.task = self.ray.remote(fold_task).options(**shape)
        self.score_task = self.ray.remote(score_task).options(**shape)
        self.encode_task = self.ray.remote(encode_task).options(**shape)
        self.slots = max(1, int(resources.get("CPU", 0) // fold_cpus))
        if fold_gpus:
            self.slots = max(1, min(self.slots, int(resources.get("GPU", 0) // fold_gpus)))
        self.progress.note(f"executor ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
                           f"{fold_cpus} CPU(s) and {fold_gpus:g} GPU(s) per fold, up to {self.slots} folds at a time")
        self.check_storage()

    def check_storage(self) -> None:
        token = uuid.uuid4().hex
        probe = self.ray.remote(probe_task).options(num_cpus=0)
        try:
            node = self.ray.get(probe.remote(str(self.run_dir.resolve()), token))
        except self.ray.exceptions.RayTaskError as exc:
            self.close()
            raise PseudoError(f"{self.run_dir}: a Ray task cannot write in the run directory "
                              f"({type(exc.cause).__name__}: {exc.cause})") from None
        try:
            check_shared(self.run_dir, node, token)
        except PseudoError:
            self.close()
            raise

    def train(self, plan: RoundPlan, folds: list[int], progress: Progress):
        """Yield (fold, record) as the fold tasks finish, in the order they finish."""
        if not folds:
            return
        shipped = self.ray.put(replace(plan, heads=TrainingHeads()))  # each task builds its own head
        pending = {self.task.remote(shipped, fold): fold for fold in folds}
        progress.note(f"round {plan.round}: {len(folds)} fold(s) submitted as Ray tasks")
        yield from self.gather(pending, lambda fold: f"round {plan.round} fold {fold}")

    def score(self, plan: RoundPlan, jobs: list[tuple[str, np.ndarray | None]], progress: Progress) -> dict:
        """Each scoring job (test, pool, holdout) cut into `cv.predict`'s chunks, in as many Ray tasks as
        the cluster runs at once; every task loads the round's fold heads from the run directory. The numbers
        are those of `LocalFolds.score`: the chunks are the same."""
        shipped = self.ray.put(replace(plan, heads=TrainingHeads()))
        pending, out = {}, {}
        for name, idx in jobs:
            source = score_source(plan, name)
            idx = np.arange(len(source)) if idx is None else np.asarray(idx)
            chunks = score_chunks(source, idx, plan.recipe.dynamic_padding)
            out[name] = np.zeros((plan.n_folds, len(idx), 3), np.float32)
            shown = f"round {plan.round} score {'pool' if name == 'unmask' else name}"
            progress.start(shown, len(idx))
            for group in np.array_split(np.arange(len(chunks)), min(self.slots, len(chunks))):
                at = [chunks[i] for i in group]
                ref = self.score_task.remote(shipped, name, [idx[a] for a in at])
                pending[ref] = (name, np.concatenate(at), shown)
        names = ", ".join("pool" if name == "unmask" else name for name, _ in jobs)
        progress.note(f"round {plan.round}: {names} scored in {len(pending)} Ray task(s)")
        for (name, at, shown), probs in self.gather(pending, lambda key: key[2]):
            out[name][:, at] = probs
            progress.advance(shown, len(at))
            if not any(task == shown for _, _, task in pending.values()):
                progress.finish(shown)
        return out

    def gather(self, pending: dict, what):
        """Yield each finished task's result with its key in `pending` (ref -> key), in the order they finish;
        on an error or Ctrl-C the others are cancelled. `what(key)` names a task in an error."""
        try:
            while pending:
                [done], _ = self.ray.wait(list(pending), num_returns=1)
                key = pending.pop(done)
                yield key, self._result(done, what(key))
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def _result(self, ref, what: str):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, (PseudoError, OSError)):
                raise exc.cause from None  # one line at the CLI, as in this process
            raise PseudoError(f"{what}: the Ray task failed ({type(exc.cause).__name__}: {exc.cause})") from None
        except self.ray.exceptions.WorkerCrashedError:
            raise PseudoError(f"{what}: its worker died {RETRIES + 1} times; run the same command to resume") from None

    def close(self) -> None:
        self.cluster.close()


class RayEncoder:
    """The frozen encoder's feature pass as Ray tasks (`--executor ray`): the rows left of a cache entry
    cut into ranges of whole encoder batches, two per task slot, each task writing its rows into the entry's
    features.npy on the shared run directory; the same numbers as encoding in one process (the batches are
    the same). The encoder folder must be at the same path on every node."""

    def __init__(self, folds: RayFolds, files, progress: Progress):
        self.folds, self.files, self.progress = folds, files, progress
        self.hidden_size = int(files.config_dict().get("hidden_size", 0))

    def encode_ranges(self, features_path: Path, offset: int, tokens, done: int, advance):
        from ..encoding.features import ENCODE_BATCH

        n = len(tokens)
        starts = list(range(done, n, ENCODE_BATCH))
        pending = {}
        for group in np.array_split(np.arange(len(starts)), min(len(starts), 2 * self.folds.slots)):
            if len(group):
                start, stop = starts[group[0]], min(n, starts[group[-1]] + ENCODE_BATCH)
                ref = self.folds.encode_task.remote(self.files, str(features_path), offset,
                                                    tokens.take(slice(start, stop)), start)
                pending[ref] = (start, stop)
        self.progress.note(f"{Path(features_path).parent.name}: {n - done:,} posts encoded in {len(pending)} Ray task(s)")
        for (start, stop), _ in self.folds.gather(pending, lambda key: f"encoding rows {key[0]}–{key[1]}"):
            advance(stop - start)
            yield start, stop


def make_executor(config, run_dir: Path, progress: Progress):
    """The folds' executor a run's options name (`config.RunConfig.executor`)."""
    if config.executor == "ray":
        return RayFolds(run_dir, config.ray_address, config.fold_cpus, config.fold_gpus, progress=progress)
    from .cv import LocalFolds

    return LocalFolds()
