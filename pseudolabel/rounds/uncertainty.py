"""How sure the teacher is of each pool post, beyond how confident: pure numpy over the members of an
ensemble, (M, N, K) probabilities of M models (the round's fold heads, or T MC-dropout passes of each).

Members are summed up as *moments*, (N, 2K+1) per group of members: the mean probabilities, the mean
squared probabilities and the mean entropy. Groups of as many members each average into the moments
of all of them, so a round keeps one (N, 2K+1) array per fold (`--mc-passes`: its T passes) and the
whole ensemble's figures follow from their mean.

- `bald`: the mutual information between a post's label and the member (BALD): the entropy of the
  members' mean minus the mean of their entropies. Zero when every member says the same, whatever
  that is; large when confident members disagree.
- `label_variance`: the variance over the members of the probability of the post's chosen label.
- `confidence_weights`: UST's weight of a pseudo-labeled post, -log(variance + 1e-10), scaled so the
  selected posts of a fold weigh 1 on average (as many posts' worth as the unweighted selection).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import PseudoError

_EPS = 1e-10


def _members(members: np.ndarray) -> np.ndarray:
    members = np.asarray(members, dtype=np.float64)
    if members.ndim != 3 or len(members) < 1:
        raise PseudoError(f"ensemble members must be (members, rows, classes), got shape {members.shape}")
    return members


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) along the last axis."""
    probs = np.asarray(probs, dtype=np.float64)
    return -(probs * np.log(probs + _EPS)).sum(axis=-1)


def bald(members: np.ndarray) -> np.ndarray:
    """(N,) BALD of each row: H(mean of the members) - mean of H(member), >= 0 up to rounding."""
    members = _members(members)
    return np.maximum(entropy(members.mean(axis=0)) - entropy(members).mean(axis=0), 0.0)


def moments(members: np.ndarray) -> np.ndarray:
    """(N, 2K+1): the members' mean probabilities, mean squared probabilities and mean entropy."""
    members = _members(members)
    return np.concatenate([members.mean(axis=0), np.square(members).mean(axis=0),
                           entropy(members).mean(axis=0)[:, None]], axis=1)


def from_moments(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(BALD (N,), per-class variance (N, K)) of the members summed up in moments `m` (N, 2K+1)."""
    m = np.asarray(m, dtype=np.float64)
    k = (m.shape[-1] - 1) // 2
    if m.ndim != 2 or m.shape[-1] != 2 * k + 1 or k < 1:
        raise PseudoError(f"moments must be (rows, 2 x classes + 1), got shape {m.shape}")
    mean, square, mean_entropy = m[:, :k], m[:, k:2 * k], m[:, 2 * k]
    return np.maximum(entropy(mean) - mean_entropy, 0.0), np.maximum(square - np.square(mean), 0.0)


def label_variance(members: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) variance over the members of each row's probability of `labels[row]` (rows not selected:
    the label is clipped to a class, the value unused)."""
    members = _members(members)
    labels = np.clip(np.asarray(labels, dtype=np.int64), 0, members.shape[2] - 1)
    return members[:, np.arange(members.shape[1]), labels].var(axis=0)


def confidence_weights(variance: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """(N,) weights of the selected rows, -log(variance + 1e-10) scaled to mean 1 over them (1 where
    every selected row has the same variance); 0 for rows not selected."""
    variance = np.asarray(variance, dtype=np.float64)
    selected = np.asarray(selected, bool)
    out = np.zeros(len(variance))
    if selected.any():
        raw = -np.log(np.clip(variance[selected], 0.0, None) + _EPS)  # >= log(4) for probabilities: positive
        out[selected] = raw / raw.mean()
    return out


def summary(values: np.ndarray) -> dict:
    """Mean, median and 90th percentile of per-row uncertainties (an empty selection: None each)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"mean": None, "median": None, "p90": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "p90": float(np.quantile(values, 0.9))}
