"""pseudo: semi-supervised pseudo-labeling for Chinese Weibo sentiment."""

__version__ = "0.1.0"
