"""Local BERT checkpoints: finding their files, loading them, and running the frozen encoder.

A checkpoint folder holds a config, weights and a vocabulary, either under the Hugging Face
names (config.json, tf_model.h5 or model.safetensors, vocab.txt) or under the reference
script's names (bert-base-chinese-config.json, bert-base-chinese-tf_model.h5,
bert-base-chinese-vocab.txt). Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import PseudoError

CONFIG_NAMES = ("config.json", "bert-base-chinese-config.json")
WEIGHT_NAMES = ("tf_model.h5", "model.safetensors", "bert-base-chinese-tf_model.h5")
VOCAB_NAMES = ("vocab.txt", "bert-base-chinese-vocab.txt")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
HF_NAMES = {"bert-base-chinese-config.json": "config.json", "bert-base-chinese-tf_model.h5": "tf_model.h5",
            "bert-base-chinese-vocab.txt": "vocab.txt"}


@dataclass(frozen=True)
class EncoderFiles:
    """The files of one checkpoint folder and a content hash that identifies the encoder."""

    folder: Path
    config: Path
    weights: Path
    vocab: Path
    identity: str  # sha256 over config, weights and vocabulary bytes

    def config_dict(self) -> dict:
        try:
            return json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PseudoError(f"{self.config}: not a readable JSON config ({exc})") from None

    def describe(self) -> str:
        cfg = self.config_dict()
        weights = read_card(self.folder).get("weights", "pretrained")
        return (f"{self.folder} ({cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
                f"{weights} weights, id {self.identity[:12]})")


def _first(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise PseudoError(f"{folder}: no {what} file, expected one of {', '.join(names)}")


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def find_encoder(folder: str | Path) -> EncoderFiles:
    """Locate the checkpoint files in `folder`; a missing one is a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PseudoError(f"{folder}: encoder folder not found")
    config = _first(folder, CONFIG_NAMES, "config")
    weights = _first(folder, WEIGHT_NAMES, "weights")
    vocab = _first(folder, VOCAB_NAMES, "vocabulary")
    return EncoderFiles(folder, config, weights, vocab, _sha256([config, weights, vocab]))


def _hf_view(files: EncoderFiles, tmp: Path) -> Path:
    """A folder with the Hugging Face file names, linking to the checkpoint's files."""
    for path in (files.config, files.weights, files.vocab):
        (tmp / HF_NAMES.get(path.name, path.name)).symlink_to(path.resolve())
    for name in TOKENIZER_EXTRAS:
        if (files.folder / name).is_file():
            (tmp / name).symlink_to((files.folder / name).resolve())
    return tmp


def load_tokenizer(files: EncoderFiles):
    """A fast WordPiece tokenizer from the checkpoint's vocabulary (and tokenizer config, if any)."""
    from transformers import BertTokenizerFast

    try:
        if any((files.folder / name).is_file() for name in TOKENIZER_EXTRAS):
            with tempfile.TemporaryDirectory() as tmp:
                return BertTokenizerFast.from_pretrained(_hf_view(files, Path(tmp)), local_files_only=True)
        return BertTokenizerFast(vocab_file=str(files.vocab))
    except Exception as exc:  # tokenizers raises several unrelated types for a bad file
        raise PseudoError(f"{files.vocab}: cannot build a tokenizer ({type(exc).__name__}: {exc})") from None


def load_bert(files: EncoderFiles):
    """The TFBertModel of the checkpoint, with hidden states returned."""
    from ..core._tf import tf  # noqa: F401  (sets the Keras environment first)
    from transformers import BertConfig, TFBertModel
    from transformers.utils import logging as hf_logging

    config = BertConfig.from_json_file(str(files.config)) if files.config.is_file() else None
    if config is None or getattr(config, "model_type", "bert") != "bert":
        raise PseudoError(f"{files.config}: not a BERT config")
    config.output_hidden_states = True
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model, info = TFBertModel.from_pretrained(
                _hf_view(files, Path(tmp)), config=config, local_files_only=True, output_loading_info=True,
                use_safetensors=files.weights.suffix == ".safetensors",
            )
    except PseudoError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PseudoError(f"{files.weights}: cannot load encoder weights ({detail[:200]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [m for m in info.get("missing_keys", []) if "pooler" not in m]
    if missing:
        raise PseudoError(f"{files.weights}: checkpoint lacks {len(missing)} encoder weight(s), e.g. {missing[0]}")
    model.trainable = False
    return model


class FrozenEncoder:
    """Runs the frozen encoder in inference mode and returns hidden_states[-2] (the recipe's features).

    `calls` and `rows` count forward passes and the texts they covered, so tests and benchmarks
    can check how often the encoder ran.
    """

    def __init__(self, files: EncoderFiles):
        from ..core._tf import tf

        self.files = files
        self.model = load_bert(files)
        self.hidden_size = int(self.model.config.hidden_size)
        self.calls = 0
        self.rows = 0

        @tf.function(reduce_retracing=True)
        def forward(input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=tf.zeros_like(input_ids), output_hidden_states=True, training=False)
            return out.hidden_states[-2]

        self._forward = forward

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Features (B, T, H) float32 for one batch of token ids."""
        self.calls += 1
        self.rows += len(input_ids)
        return self._forward(np.asarray(input_ids, np.int32), np.asarray(attention_mask, np.int32)).numpy()


def quiet_transformers() -> None:
    """Silence the deprecation banners transformers prints for its TF classes."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging  # importing it sets its own level first

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # raised by transformers itself each time a TF model is called inside a Keras graph (faithful mode)
    warnings.filterwarnings("ignore", message="`seed_generator` is deprecated", category=UserWarning)


CARD_NAME = "encoder_card.json"


def read_card(folder: Path) -> dict:
    path = Path(folder) / CARD_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def save_random_encoder(folder: str | Path, vocab: str | Path, *, layers: int = 4, hidden: int = 128,
                        heads: int = 2, intermediate: int = 512, max_positions: int = 512, seed: int = 0,
                        safetensors: bool = False) -> EncoderFiles:
    """Write a randomly initialised BERT checkpoint folder (Hugging Face layout) with `vocab`."""
    from ..core._tf import keras
    from transformers import BertConfig, TFBertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_lines = Path(vocab).read_text(encoding="utf-8").splitlines()
    config = BertConfig(vocab_size=len(vocab_lines), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate,
                        max_position_embeddings=max_positions)
    keras.utils.set_random_seed(seed)
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)
    model.save_pretrained(str(folder), safe_serialization=safetensors)
    (folder / "vocab.txt").write_text("\n".join(vocab_lines) + "\n", encoding="utf-8")
    card = {"weights": "random", "seed": seed, "layers": layers, "hidden": hidden, "heads": heads,
            "intermediate": intermediate,
            "note": "randomly initialised BERT with the bert-base-chinese vocabulary; not pretrained"}
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return find_encoder(folder)
