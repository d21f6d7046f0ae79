"""pseudo: semi-supervised pseudo-labeling for Chinese Weibo sentiment."""

from .core.constants import VERSION as __version__  # noqa: F401


def load_model(path, round=None, encoder=None, progress=None):
    """The model a run delivered (a run directory), one of its rounds, or an exported model folder:
    `load_model("runs/run-1234abcd").predict_proba(["今天很开心"])` -> (N, 3) probabilities of -1, 0, 1.
    See `pseudolabel.predict.load_model` (imported on first use: `import pseudolabel` stays light)."""
    from .delivery.predict import load_model as _load_model

    return _load_model(path, round=round, encoder=encoder, progress=progress)
