"""How the library reports progress and notes without printing: the caller passes a Progress."""

from __future__ import annotations


class Progress:
    """No-op progress sink; the CLI subclasses it with rich bars.

    `task` names a unit of long work (e.g. "encode test"), `total` its steps in rows or batches.
    """

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, steps: int = 1) -> None:
        pass

    def finish(self, task: str) -> None:
        pass

    def status(self, task: str, text: str) -> None:
        """A short running figure of the task (e.g. its current loss)."""

    def note(self, message: str) -> None:
        """A one-line remark for the user (how a file was read, what was reused, ...)."""

    def plan(self, rounds: int, folds: int, work: list[list[float] | None] | None = None) -> None:
        """The run's whole work: rounds 0..rounds-1 of `folds` folds each (it may stop earlier); `work`: per
        round, each fold's relative cost under the run's cost model (`rounds.costs`), None where not modelled."""

    def fold_finished(self, round: int, fold: int, n_folds: int, record: dict, reused: bool = False) -> None:
        """Fold `fold` (0-based, its folder `fold_<fold>`) of a round is done; `record` is its fold.json
        (epochs, best epoch, per-epoch history, validation scores, seconds); `reused`: finished earlier."""

    def round_reused(self, round: int, n_folds: int) -> None:
        """A round finished by an earlier process is read back, not trained."""

    def round_finished(self, rounds: list[dict]) -> None:
        """A round was trained; `rounds` holds the metrics of every round so far."""


class Recorder(Progress):
    """Keeps everything it is told; useful for tests and for logging."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.tasks: dict[str, list[int]] = {}

    def start(self, task: str, total: int) -> None:
        self.tasks[task] = [0, total]

    def advance(self, task: str, steps: int = 1) -> None:
        self.tasks[task][0] += steps

    def note(self, message: str) -> None:
        self.notes.append(message)
