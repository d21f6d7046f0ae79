"""Length-grouped batches: rows of similar length together, so padding to the batch's longest row
wastes little (MLM pretraining, and the head's opt-in dynamic padding)."""

from __future__ import annotations

import numpy as np

GROUP = 50  # sort chunks of this many batches by length


def length_grouped(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   group: int = GROUP) -> list[np.ndarray]:
    """Row indices per batch: shuffled rows, sorted by length within chunks of `group` batches, cut into
    batches, batches shuffled. Every row appears once."""
    order = rng.permutation(len(lengths))
    batches = []
    chunk_rows = batch_size * group
    for start in range(0, len(order), chunk_rows):
        chunk = order[start:start + chunk_rows]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_length(longest: int, max_len: int, step: int = 16) -> int:
    """The length a batch is cut to: its longest row rounded up to a multiple of `step` (few distinct
    shapes, so the Keras graph is traced a few times only), at most `max_len`."""
    return int(min(max_len, max(step, -(-int(longest) // step) * step)))
