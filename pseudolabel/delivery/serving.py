"""A TensorFlow SavedModel of an export's fold heads, for TF Serving: token ids in, probabilities out.

The signature `serving_default(input_ids, attention_mask)` (int32, [batch, steps], steps <= the
model's max length, padded with the vocabulary's [PAD] id 0 and a 0 mask) returns `probabilities`
[batch, 3] (classes -1, 0, 1): the frozen encoder's hidden_states[-2] (rounded to float16 where the
run cached its features), through every fold head, averaged per round, then over the rounds. Tokenize with
the export's `vocab.txt` (BERT WordPiece, [CLS] … [SEP]). Padding runs through the heads' BiGRU, so pad to the
model's max length for the scores of a run without --dynamic-padding; `pseudo predict` reproduces
a dynamic-padding run's own cuts. The co-teacher's TF-IDF text model of a delivered blend is not a
TensorFlow graph and is not inside: the SavedModel gives the heads' mean.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .spec import ModelSpec
from ..core.errors import PseudoError

SIGNATURE = "serving_default"


def save_serving(spec: ModelSpec, out: Path) -> Path:
    """Write the SavedModel of `spec`'s fold heads (and its encoder) to `out`."""
    from ..core._tf import tf
    from ..encoding.encoder import load_bert
    from ..heads.model import Recipe, build_head

    bert = load_bert(spec.encoder())
    parts = []
    for part in spec.parts:
        recipe = replace(Recipe.from_dict(part.recipe), dynamic_padding=True)
        heads = []
        for path in part.heads:
            head = build_head(spec.max_len, spec.hidden, recipe, compile=False)
            head.load_weights(str(path))
            heads.append(head)
        parts.append((heads, recipe.zero_padding))
    module = _Serving(bert, parts, spec.feature_dtype == "float16")
    try:
        tf.saved_model.save(module, str(out), signatures={SIGNATURE: module.serve})
    except (ValueError, TypeError) as exc:  # tracing errors of the pinned stack, reported in one line
        raise PseudoError(f"{out}: cannot write a SavedModel ({str(exc).splitlines()[0][:200]})") from None
    return Path(out)


def _serving_module():
    from ..core._tf import tf

    class Serving(tf.Module):
        def __init__(self, bert, parts, float16: bool):
            super().__init__()
            self.bert, self.float16 = bert, float16
            self.heads = [heads for heads, _ in parts]  # tracked by the module: the weights are saved
            self.with_mask = [with_mask for _, with_mask in parts]

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                      tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
        def serve(self, input_ids, attention_mask):
            feats = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=tf.zeros_like(input_ids), output_hidden_states=True,
                              training=False).hidden_states[-2]
            if self.float16:
                feats = tf.cast(tf.cast(feats, tf.float16), tf.float32)
            mask = tf.cast(attention_mask, tf.float32)[:, :, None]
            means = []
            for heads, with_mask in zip(self.heads, self.with_mask):
                x = [feats, mask] if with_mask else feats
                means.append(tf.add_n([head(x, training=False) for head in heads]) / len(heads))
            return {"probabilities": tf.add_n(means) / len(means)}

    return Serving


def _Serving(bert, parts, float16: bool):
    return _serving_module()(bert, parts, float16)
