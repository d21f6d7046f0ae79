"""`pseudo predict --executor ray`: the posts of a file scored by Ray Data `map_batches` in a pool of actors,
each holding the delivered model once (`--concurrency` actors, `--actor-cpus` / `--actor-gpus` each).

The driver reads each file with `pseudo`'s own reader (encodings, id and text columns, empty texts) and plans
every post's cut as a local prediction does (`DeliveredModel._plan`: with `--dynamic-padding` runs the cuts
depend on the whole file), so an actor scores a batch exactly as the local path scores those posts. Each row
carries its position, and the output is written in the input's order whatever order batches finish in. The
dataset of one file (its texts, cuts and positions) is held in Ray's object store while it is scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.cluster import Cluster, thread_env
from ..core.constants import N_CLASSES
from ..core.progress import Progress
from ..data.posts import iter_posts


class _Scorer:
    """One actor: the delivered model loaded once, scoring batches of (position, text, cut)."""

    def __init__(self, source: str, round: int | None, encoder: str | None):
        from .predict import load_model

        self.model = load_model(source, round=round, encoder=encoder)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        tokens = self.model.tokens(texts)
        probs = self.model.blend(texts, self.model.head_probs(tokens, np.asarray(batch["cut"])))
        return {"row": np.asarray(batch["row"]), "probs": probs}


class RayScoring:
    """`scoring` for `DeliveredModel.predict_files`: each file's posts through `map_batches`."""

    def __init__(self, source: str | Path, round: int | None = None, encoder: str | Path | None = None,
                 address: str | None = None, concurrency: int = 2, actor_cpus: int = 1, actor_gpus: float = 0.0,
                 progress: Progress | None = None):
        self.cluster = Cluster(address, progress, "predict --executor ray")
        self.cluster.require(actor_cpus, actor_gpus, f"actor-cpus {actor_cpus} / actor-gpus {actor_gpus:g}")
        self.model_args = dict(source=str(source), round=round, encoder=None if encoder is None else str(encoder))
        self.concurrency, self.cpus, self.gpus = concurrency, actor_cpus, actor_gpus

    def __call__(self, path: Path, steps: np.ndarray, chunk_rows: int):
        import ray

        ids, rows = [], []
        for posts in iter_posts(path, chunk_rows):
            rows += [{"row": len(ids) + i, "text": text, "cut": int(steps[len(ids) + i])}
                     for i, text in enumerate(posts.texts)]
            ids += posts.ids
        if not rows:
            return
        data = ray.data.from_items(rows)
        scored = data.map_batches(_Scorer, fn_constructor_kwargs=self.model_args, concurrency=self.concurrency,
                                  num_cpus=self.cpus, num_gpus=self.gpus, batch_size=chunk_rows,
                                  batch_format="numpy", runtime_env=thread_env(self.cpus))
        probs = np.zeros((len(rows), N_CLASSES), np.float32)
        for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
            probs[batch["row"]] = batch["probs"]
        for start in range(0, len(rows), chunk_rows):
            yield ids[start:start + chunk_rows], probs[start:start + chunk_rows]

    def close(self) -> None:
        self.cluster.close()
