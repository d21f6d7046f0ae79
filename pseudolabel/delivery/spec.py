"""What prediction needs to know of a delivered model (`ModelSpec`): the encoder (folder and content hash), the
parts it averages (`Part`: one round's fold heads or fine-tuned fold models, their weight files and recipe, and
whether the run cut that round's chunks to their longest post), how the run fed them (maximum length, feature
precision), and the share and files of the co-teacher blend when a blend was delivered. Read from a run
directory or an exported folder by delivered.py; used by predict.py and serving.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..encoding.encoder import EncoderFiles, find_encoder
from ..core.errors import PseudoError
from ..core.store import RunDir


@dataclass
class Part:
    """One round's fold models in a delivered output; the output averages its parts' fold means."""

    round: int
    recipe: dict  # the round's head recipe (model.Recipe fields)
    heads: list[Path]  # the fold heads' (or fine-tuned fold models') weight files, fold order
    dynamic_padding: bool  # the run scored this round in length-sorted chunks cut to their longest post
    student: str = "head"  # "finetune": `heads` are fold models that fine-tuned the encoder (finetune.py)
    finetune: dict | None = None  # their finetune.FineTune settings, with student "finetune"

    @property
    def models(self) -> str:
        return "models" if self.student == "finetune" else "heads"


@dataclass
class ModelSpec:
    kind: str  # "run" (a run directory) or "export" (an exported folder)
    source: Path  # the run directory or export folder it was read from
    parts: list[Part]  # the rounds averaged (one part: a single round's fold ensemble)
    weight: float  # share of the co-teacher in the delivered blend (0: the heads alone)
    max_len: int
    hidden: int
    feature_dtype: str  # "float16": the heads saw cached features; "float32": streamed ones
    encoder_folder: Path | None  # None: an export that references its encoder, named by --encoder only
    encoder_sha256: str
    card: dict = field(default_factory=dict)  # what the model card says: data, rounds, scores
    encoder_hint: str | None = None  # where an export's referenced encoder was (shown, never read)
    class_weights: list[float] | None = None  # labels argmax(p · w) (--class-weights auto); None: argmax(p)

    @property
    def rounds(self) -> list[int]:
        return [p.round for p in self.parts]

    @property
    def round(self) -> int:
        """The last round averaged (the only one, for a single round)."""
        return self.parts[-1].round

    @property
    def heads(self) -> list[Path]:
        """Every part's weight files."""
        return [h for p in self.parts for h in p.heads]

    @property
    def dynamic_padding(self) -> bool:
        """A file's posts need the run's chunk cuts (some part was scored with them)."""
        return any(p.dynamic_padding for p in self.parts)

    def describe(self) -> str:
        """What predicts, in words: "round 0's 2 fold heads", "the mean of rounds 0 (5 fold heads), 1 (5 fold
        models)", each with the blend when there is one."""
        if len(self.parts) == 1:
            p = self.parts[0]
            what = f"round {p.round}'s {len(p.heads)} fold {p.models}"
        else:
            what = "the mean of rounds " + ", ".join(f"{p.round} ({len(p.heads)} fold {p.models})"
                                                     for p in self.parts)
        what += f" blended with the co-teacher at {self.weight:.2f}" if self.weight > 0 else ""
        if self.class_weights:
            what += ", labels weighted per class " + "/".join(f"{w:.2f}" for w in self.class_weights)
        return what

    def text_model(self, progress=None):
        """The co-teacher refit on every labeled row, which the delivered blend mixes in (weight > 0)."""
        from ..rounds.coteacher import TextModel, refit_model

        if self.kind == "run":
            return refit_model(RunDir(self.source), progress)
        return TextModel.load(self.source / "co_teacher")

    def encoder(self) -> EncoderFiles:
        """The encoder's files, checked against the content hash the heads were trained on."""
        if self.encoder_folder is None:
            raise PseudoError(f"{self.source}: the encoder is not in this model folder (exported without "
                              f"--copy-encoder; it was at {self.encoder_hint}); pass --encoder DIR (checked against "
                              f"the content hash the heads were trained on)")
        if not Path(self.encoder_folder).is_dir():
            raise PseudoError(f"{self.encoder_folder}: encoder folder not found (the model was trained with it); "
                              f"pass --encoder with the folder it moved to")
        files = find_encoder(self.encoder_folder)
        if self.kind == "export" and files.weights.suffix == ".h5":
            from .untrusted import weights_only

            weights_only(files.weights)
        if files.identity != self.encoder_sha256:
            raise PseudoError(f"{self.encoder_folder}: not the encoder the model was trained with (content "
                              f"{files.identity[:12]}, expected {self.encoder_sha256[:12]})")
        return files
