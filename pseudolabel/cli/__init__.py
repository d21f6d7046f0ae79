"""The `pseudo` commands and what they render."""

from .commands import app, main  # noqa: F401  (the console script and `python -m pseudolabel`)
