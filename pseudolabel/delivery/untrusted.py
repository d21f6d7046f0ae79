"""An exported model folder is input from someone else: whatever its model.json says, loading reads only
files inside the folder, only in the formats prediction needs (JSON, HDF5 weights, .npy without pickles,
vocabulary text), and refuses a folder that tries anything else in one line.

- `check_links`: no link in the folder leads outside it (a link to `/etc/…` or `../../` is refused).
- `inside`: a file name from model.json is relative and stays inside the folder once resolved.
- `weights_only`: an HDF5 file holds weights, not a whole Keras model (whose architecture can carry code,
  e.g. a Lambda layer); nothing here deserializes an architecture or runs code from a folder.
- `checked_record`: model.json's fields have the types and ranges prediction uses.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import PseudoError

HEAD_SUFFIX = ".weights.h5"


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_links(folder: Path) -> None:
    """Refuse a folder holding a link (to a file or a folder) that resolves outside it."""
    root = folder.resolve()
    for here, dirs, files in os.walk(root):  # links to folders are listed, not followed
        for name in dirs + files:
            path = Path(here) / name
            if path.is_symlink() and not _within(path.resolve(), root):
                raise PseudoError(f"{folder / path.relative_to(root)}: a link to {path.resolve()}, outside the "
                                  f"model folder; a model folder is read only inside itself")


def inside(folder: Path, name, what: str) -> Path:
    """`folder / name` for a file name taken from model.json, refused unless it stays inside `folder`."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or \
            not _within((folder / name).resolve(), folder.resolve()):
        raise PseudoError(f"{folder / 'model.json'}: {what} {name!r} is not a file inside the model folder")
    return folder / name


def weights_only(path: Path) -> Path:
    """Refuse an HDF5 file that holds a whole Keras model (architecture and all) instead of weights."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            whole = "model_config" in f.attrs or "model_config" in f
    except OSError as exc:
        raise PseudoError(f"{path}: not an HDF5 weights file ({exc})") from None
    if whole:
        raise PseudoError(f"{path}: holds a whole Keras model (an architecture, which can carry code such as a "
                          f"Lambda layer), not weights; a model folder holds weights only")
    return path


def checked_record(record, path: Path) -> dict:
    """model.json's fields as prediction uses them; a wrong type or range is one line naming the field."""
    if not isinstance(record, dict):
        raise PseudoError(f"{path}: expected a JSON object")

    def need(key, ok, expected):
        if key not in record or not ok(record[key]):
            raise PseudoError(f"{path}: {key} must be {expected}, got {record.get(key)!r}")

    positive = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
    need("round", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a round number")
    need("weight", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
         "a share in [0, 1]")
    need("max_len", positive, "a positive integer")
    need("hidden", positive, "a positive integer")
    need("dynamic_padding", lambda v: isinstance(v, bool), "true or false")
    need("feature_dtype", lambda v: v in ("float16", "float32"), "'float16' or 'float32'")
    need("recipe", lambda v: isinstance(v, dict), "an object")
    need("heads", lambda v: isinstance(v, list) and v and all(isinstance(h, str) and h.endswith(HEAD_SUFFIX)
                                                              for h in v), f"a list of {HEAD_SUFFIX} file names")
    need("encoder", lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str), "an object with sha256")
    return record
