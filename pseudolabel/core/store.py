"""The run directory: atomic writes, completion markers, saved config, resume.

Layout (see the README)::

    <run>/config.json                 resolved config, its hash, package + encoder identity
    <run>/features/<split>-<key>/     cached encoder features (a link to <parent>/.stages/features)
    <run>/round_0/                    round 0 (a link to <parent>/.stages/round0-<key>: runs that differ
                                      only in options of later rounds share it)
    <run>/round_<k>/fold_<i>/         one fold's head weights and validation predictions, DONE last
    <run>/round_<k>/...               the round's arrays, metrics.json, submission.csv, DONE last

Every file is written to a temporary name in the same folder and renamed into place, so a
reader never sees a half-written file; a folder without DONE is unfinished.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import PseudoError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's own 0600 would hide run files from the group


@contextlib.contextmanager
def naming(path: Path):
    """Filesystem errors raised inside name `path` (a full disk's ENOSPC from a write names no file)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file next to `path` (same folder, so a rename into place is atomic), mode as open() gives."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def written_aside(path: Path, suffix: str = ".tmp"):
    """Yield a temporary path beside `path` to write; on success it is renamed onto `path` (atomic),
    on any failure removed, so `path` is never half a file. Filesystem errors name `path`."""
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(path, suffix)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with written_aside(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode())


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    _atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def spreadsheet_safe(cell):
    """A text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage
    return) with a `'` in front, as OWASP advises against CSV injection; numbers (`-1`, `+3.5`) and
    everything else stay as they are."""
    if not isinstance(cell, str) or not cell.startswith(FORMULA_START):
        return cell
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


def atomic_write_csv(path: Path, header: list[str], rows, raw: bool = False) -> None:
    """A CSV file written whole; its text cells spreadsheet-safe (`spreadsheet_safe`) unless `raw`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows if raw else ([spreadsheet_safe(cell) for cell in row] for row in rows))
    _atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def load_npy(path: Path) -> np.ndarray:
    """An array of the run directory; a missing or damaged file is a one-line PseudoError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = "not found" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
        raise PseudoError(f"{path}: {reason}; delete the folder it is in to recompute it, or --restart the run") \
            from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PseudoError(f"{path}: not found") from None
    except ValueError as exc:
        raise PseudoError(f"{path}: not valid JSON ({exc})") from None


def mark_done(folder: Path) -> None:
    _atomic_write_bytes(Path(folder) / "DONE", b"ok\n")


def is_done(folder: Path) -> bool:
    return (Path(folder) / "DONE").is_file()


class RunLock:
    """An exclusive lock on a run directory, held by the process that writes it (`pseudo run`,
    `pseudo select`). It is an advisory `flock` on `<run>/.lock`, which also records the holder's
    PID: the kernel releases it when the process ends, however it ends, so the lock of a killed
    run is never stale."""

    NAME = ".lock"

    def __init__(self, root: str | Path):
        self.path = Path(root) / self.NAME
        self._fh = None

    def acquire(self, what: str = "pseudo run", wait: Callable[[str], None] | None = None) -> "RunLock":
        """Take the lock. Held by another process: a one-line PseudoError naming it, or with `wait`,
        `wait('pid N, what')` is called once and the lock is waited for."""
        with naming(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder() or "pid unknown"
            if wait is None:
                fh.close()
                raise PseudoError(f"{self.path.parent}: in use by another process ({holder}); "
                                  f"wait for it to finish, or use another --run-dir") from None
            wait(holder)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {what}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the flock
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fh is None else self

    def __exit__(self, *exc) -> None:
        self.release()

    def holder(self) -> str | None:
        """'pid N (what)' of the process holding the lock, or None if nobody holds it."""
        if not self.path.is_file():
            return None
        with open(self.path, "r", encoding="utf-8") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, _, what = fh.read().strip().partition(" ")
                return f"pid {pid}" + (f", {what}" if what else "") if pid else "pid unknown"
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


@contextlib.contextmanager
def computing(folder: Path, what: str, wait: Callable[[str], None]):
    """Hold the lock of a folder shared by runs side by side (a feature cache entry, round 0 in
    `.stages/`) while computing it; another process computing it is waited for (`wait` is told)."""
    lock = RunLock(folder).acquire(what, wait)
    try:
        yield
    finally:
        lock.release()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"`{name}` in the folder")


class _Folder:
    """A folder of the run directory: its files by name (`folder.metrics` is a Path), DONE last."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    done_marker = _file("DONE")

    def is_done(self) -> bool:
        return is_done(self.path)

    def mark_done(self) -> None:
        mark_done(self.path)

    def preds(self, name: str) -> Path:
        """`<name>_preds.npy`: a fold model's own predictions of a split (faithful mode), the co-teacher's."""
        return self.path / f"{name}_preds.npy"


class FoldFiles(_Folder):
    """`round_<k>/fold_<i>/`: one fold's head and its validation part."""

    weights = _file("head.weights.h5")
    record = _file("fold.json")
    valid_preds = _file("valid_preds.npy")
    valid_idx = _file("valid_idx.npy")
    train_idx = _file("train_idx.npy")



class RoundFiles(_Folder):
    """`round_<k>/`: the round's arrays, records and selection; `fold(i)` its folds."""

    folds = _file("folds.npy")  # round 0 only: the fold id of every labeled row, fixed for the run
    oof_preds = _file("oof_preds.npy")
    holdout_preds = _file("holdout_preds.npy")
    test_preds = _file("test_preds.npy")
    unmask_preds = _file("unmask_preds.npy")  # the pool's predictions, named as the reference script
    pool_mc = _file("pool_mc.npy")  # --mc-passes: (F, N_pool, 7) moments of each fold's passes (rounds/uncertainty.py)
    metrics = _file("metrics.json")
    submission = _file("submission.csv")
    submission_blend = _file("submission_blend.csv")
    selected_round = _file("selected_round.npy")
    pseudo_labels = _file("pseudo_labels.npy")
    pseudo_confidence = _file("pseudo_confidence.npy")
    pseudo_labels_csv = _file("pseudo_labels.csv")
    selection = _file("selection.json")

    def fold(self, i: int) -> FoldFiles:
        return FoldFiles(self.path / f"fold_{i}")

    def trained_folds(self) -> list[Path]:
        return sorted(self.path.glob("fold_*/DONE"))


class CoTeacherFiles(_Folder):
    """`co_teacher/`: the TF-IDF + LR view's predictions (`preds(name)`) and record."""

    folds = _file("folds.npy")
    record = _file("co_teacher.json")
    refit = _file("refit")  # the model refit on every labeled row (coteacher.TextModel), as the blend uses it

    def all_preds(self) -> list[Path]:
        return list(self.path.glob("*_preds.npy"))


class RunDir:
    """One run directory: every file name in it, and the records at its top (see the module docstring)."""

    CO_TEACHER = "co_teacher"
    FEATURES = "features"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config_path = property(lambda self: self.root / "config.json")
    status_path = property(lambda self: self.root / "status.json")
    final_path = property(lambda self: self.root / "final.json")
    submission = property(lambda self: self.root / "submission.csv")
    final_test_preds = property(lambda self: self.root / "final_test_preds.npy")

    @property
    def features(self) -> Path:
        return self.root / self.FEATURES

    @property
    def co_teacher(self) -> CoTeacherFiles:
        return CoTeacherFiles(self.root / self.CO_TEACHER)

    def round(self, k: int) -> RoundFiles:
        return RoundFiles(self.root / f"round_{k}")

    def fold(self, k: int, i: int) -> FoldFiles:
        return self.round(k).fold(i)

    def round_names(self) -> list[str]:
        return [path.name for path in self.root.glob("round_*")]

    def status(self) -> dict:
        return read_json(self.status_path) if self.status_path.is_file() else {}

    def finished_rounds(self) -> list[int]:
        rounds = []
        k = 0
        while self.round(k).is_done():
            rounds.append(k)
            k += 1
        return rounds

    def exists(self) -> bool:
        return self.config_path.is_file()

    def saved_config(self) -> dict:
        return read_json(self.config_path)

    @property
    def stages(self) -> Path:
        """Where stages shared by the runs beside this one live: `<parent>/.stages/`."""
        return self.root.parent / ".stages"

    def share(self, name: str, stage: str) -> None:
        """Make `<run>/<name>` a link to the shared `.stages/<stage>` (created if missing). A run
        directory that already holds its own `<name>` (made before stages were shared) keeps it."""
        link, target = self.root / name, self.stages / stage
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            return
        target.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, link.parent), link, target_is_directory=True)

    def remove(self, name: str) -> None:
        """Remove `<run>/<name>`: a link to a shared stage is unlinked (the stage stays for other runs)."""
        path = self.root / name
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


def latest_run(runs_root: str | Path = "runs") -> Path:
    """The most recently modified run directory under `runs_root`."""
    root = Path(runs_root)
    candidates = [p for p in root.glob("*/config.json")] if root.is_dir() else []
    if not candidates:
        raise PseudoError(f"{root}: no runs found (start one with `pseudo run`, or pass --run-dir)")
    return max(candidates, key=lambda p: p.stat().st_mtime).parent
