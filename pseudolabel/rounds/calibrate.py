"""Confidence worth thresholding: temperature scaling fitted on out-of-fold predictions, and ECE."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens, T < 1 sharpens, T = 1 returns p unchanged."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood of `labels`."""
    labels = np.asarray(labels)
    result = minimize_scalar(lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), labels),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: rows, mean confidence, accuracy."""
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence <= hi)
        table.append({"low": float(lo), "high": float(hi), "rows": int(inside.sum()),
                      "confidence": float(confidence[inside].mean()) if inside.any() else None,
                      "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return table


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    total = len(labels)
    return float(sum(row["rows"] / total * abs(row["confidence"] - row["accuracy"])
                     for row in reliability(probs, labels, bins) if row["rows"]))


def calibration_report(probs: np.ndarray, labels: np.ndarray) -> dict:
    """ECE and reliability of out-of-fold predictions, before and after temperature scaling.

    The temperature is fitted on the same rows, so `ece_scaled` is an in-sample figure.
    """
    temperature = fit_temperature(probs, labels)
    scaled = apply_temperature(probs, temperature)
    return {"ece": expected_calibration_error(probs, labels), "temperature": temperature,
            "ece_scaled": expected_calibration_error(scaled, labels), "reliability": reliability(probs, labels)}
