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
    """model.json's fields as prediction uses them, a format 1 record (one round) read as one part; a wrong
    type or range is one line naming the field."""
    if not isinstance(record, dict):
        raise PseudoError(f"{path}: expected a JSON object")
    if record.get("format") not in FORMATS:
        raise PseudoError(f"{path}: model format {record.get('format')!r}, this package reads "
                          f"{' and '.join(map(str, FORMATS))}")
    if record["format"] == 1:
        record = {**record, "parts": [{k: record.get(k) for k in PART_FIELDS}]}
    _need(record, "weight", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
          "a share in [0, 1]", path)
    _need(record, "max_len", _positive, "a positive integer", path)
    _need(record, "hidden", _positive, "a positive integer", path)
    _need(record, "feature_dtype", lambda v: v in ("float16", "float32"), "'float16' or 'float32'", path)
    _need(record, "encoder", lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str),
          "an object with sha256", path)
    _need(record, "parts", lambda v: isinstance(v, list) and v and all(isinstance(p, dict) for p in v),
          "a list of objects", path)
    if record.get("class_weights") is not None:
        _need(record, "class_weights", lambda v: isinstance(v, list) and len(v) == 3 and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < 100 for w in v),
            "three positive weights (-1, 0, 1) or null", path)
    for i, part in enumerate(record["parts"]):
        where = "" if record["format"] == 1 else f"parts[{i}]."
        _need(part, "round", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a round number",
              path, where)
        _need(part, "dynamic_padding", lambda v: isinstance(v, bool), "true or false", path, where)
        _need(part, "recipe", lambda v: isinstance(v, dict), "an object", path, where)
        _need(part, "heads", lambda v: isinstance(v, list) and v and all(isinstance(h, str) and h.endswith(HEAD_SUFFIX)
                                                                         for h in v),
              f"a list of {HEAD_SUFFIX} file names", path, where)
        _need(part, "student", lambda v: v in (None, "head", "finetune"), "'head' or 'finetune'", path, where)
    return record


FORMATS = (1, 2)
PART_FIELDS = ("round", "recipe", "heads", "dynamic_padding", "student", "finetune")


def _positive(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _need(record: dict, key: str, ok, expected: str, path: Path, where: str = "") -> None:
    if key not in record or not ok(record[key]):
        raise PseudoError(f"{path}: {where}{key} must be {expected}, got {record.get(key)!r}")
