"""What a finished run delivers, described as a model that can score new posts, and its export.

A `ModelSpec` (spec.py) says everything prediction needs, read from a run directory (`from_run`) or from an
exported model folder (`from_export`): the encoder (folder and content hash), the round's fold
heads (their weight files and recipe), how the run fed them (maximum length, feature precision,
dynamic padding), and the share and files of the co-teacher blend when a blend was delivered.

`export` writes a self-contained folder::

    <out>/model.json            what predicts (format, round, blend weight, recipe, lengths, encoder hash)
    <out>/heads/fold_<i>.weights.h5
    <out>/co_teacher/           the TF-IDF + LR refit (vocabulary.json, idf/coef/intercept/classes .npy)
    <out>/encoder/              with --copy-encoder: the encoder's config, weights and vocabulary
    <out>/vocab.txt             the tokenizer's vocabulary
    <out>/saved_model/          with --saved-model: a TensorFlow SavedModel of the fold heads (serving.py)
    <out>/README.md             the model card: data, rounds, scores, what was delivered

Reading a run's spec resolves its head recipe (`model`, `loop`), which imports TensorFlow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..rounds.config import RunConfig, migrate
from ..core.constants import VERSION
from ..encoding.encoder import HF_NAMES, TOKENIZER_EXTRAS
from ..encoding.features import human_bytes
from ..core.errors import PseudoError
from .spec import ModelSpec, Part
from .untrusted import check_links, checked_record, inside, weights_only
from ..core.store import RunDir, atomic_write_json, atomic_write_text, mark_done, read_json, written_aside

FORMAT = 2  # 2: `parts`, one per round averaged; format 1 (one round) is still read
MODEL_FILE = "model.json"
EXPORT_ENTRIES = ("heads", "co_teacher", "encoder", "saved_model", "vocab.txt", "README.md")  # what export writes


def load_spec(path: str | Path, round: int | None = None, encoder: str | Path | None = None) -> ModelSpec:
    """The spec of a run directory (its delivered output, or round `round`'s heads) or of an export."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        if round is not None:
            raise PseudoError(f"{path}: an exported model holds one round; --round needs a run directory")
        spec = from_export(path)
    elif (path / "config.json").is_file():
        spec = from_run(path, round)
    elif path.is_dir():
        raise PseudoError(f"{path}: neither a run directory (config.json) nor an exported model ({MODEL_FILE})")
    else:
        raise PseudoError(f"{path}: not found")
    if encoder is not None:
        spec.encoder_folder = Path(encoder)
    return spec


def from_run(root: str | Path, round: int | None = None) -> ModelSpec:
    """What run `root` delivered (final.json), or round `round`'s fold heads alone."""
    from ..rounds.deliver import chosen_rounds, decision_weights
    from ..heads.model import Recipe

    run_dir = RunDir(root)
    saved = migrate(run_dir.saved_config())  # paths recorded relative: as the working folder now sees them
    options = saved["config"]
    if options.get("mode") == "faithful":
        raise PseudoError(f"{run_dir.root}: made with --mode faithful, whose fold models hold the encoder inside; "
                          f"predict and export use runs made with --mode cached (the default)")
    finished = run_dir.finished_rounds()
    if round is None:
        if not run_dir.final_path.is_file():
            raise PseudoError(f"{run_dir.root}: the run has not finished (no {run_dir.final_path.name}); resume it "
                              f"with the command `pseudo report --run-dir {run_dir.root}` prints, or pass --round N "
                              f"of a finished round (finished: {', '.join(map(str, finished)) or 'none'})")
        final = read_json(run_dir.final_path)
        rounds, weight = chosen_rounds(final), float(final["weight"])
    else:
        final, rounds, weight = None, [round], 0.0
    for k in rounds:
        if k not in finished:
            raise PseudoError(f"round must be a finished round of {run_dir.root} "
                              f"({', '.join(map(str, finished)) or 'none finished'}), got {k}")
    config = RunConfig.from_saved(options, run_dir=str(run_dir.root), stream=tuple(options.get("stream", ())))
    recipe = Recipe.from_dict(saved["recipe"])
    card = {"run": str(run_dir.root.resolve()), "data": saved.get("data", {}), "options": options,
            "round": rounds[-1], "delivered_rounds": rounds, "delivered": final,
            "round_metrics": _scores(read_json(run_dir.round(rounds[-1]).metrics)),
            "rounds": [_scores(read_json(run_dir.round(k).metrics)) for k in finished],
            "package": saved.get("package")}
    return ModelSpec(
        kind="run", source=run_dir.root, parts=[_part(run_dir, recipe, config, k) for k in rounds], weight=weight,
        max_len=int(options["max_len"]), hidden=int(saved["encoder"]["config"]["hidden_size"]),
        feature_dtype="float32" if "test" in options.get("stream", []) else "float16",
        encoder_folder=Path(options["encoder"]), encoder_sha256=saved["encoder"]["sha256"], card=card,
        class_weights=decision_weights(final) if final else None)


def _part(run_dir: RunDir, recipe, config: RunConfig, round: int) -> Part:
    """Round `round`'s fold models: heads on the frozen encoder, or fine-tuned fold models."""
    from ..rounds.loop import student_recipe

    recipe = student_recipe(recipe, config, round)
    tuned = config.trainer(round) == "finetune"
    folds = sorted(p.parent for p in run_dir.round(round).trained_folds())
    return Part(round=round, recipe=recipe.to_dict(),
                heads=[run_dir.fold(round, int(p.name.split("_")[1])).weights for p in folds],
                # fine-tuned fold models cut their own batches: no cuts to reproduce, no first pass over a file
                dynamic_padding=bool(recipe.dynamic_padding) and not tuned,
                student="finetune" if tuned else "head",
                finetune=config.finetune(round).to_dict() if tuned else None)


def _scores(metrics: dict) -> dict:
    """A round's headline scores for the model card."""
    holdout = metrics.get("holdout") or {}
    return {"round": metrics["round"], "oof_macro_f1": metrics["oof"]["macro_f1"],
            "holdout_macro_f1": holdout.get("macro_f1"), "holdout_blend": metrics.get("holdout_blend"),
            "n_pseudo": metrics.get("n_pseudo", 0), "collapsed": metrics.get("collapsed", False)}


def from_export(folder: str | Path) -> ModelSpec:
    """The spec of an exported folder, read as untrusted input (untrusted.py): only files inside it. A format 1
    folder (one round, written before several could be delivered) reads as one part."""
    folder = Path(folder)
    check_links(folder)
    record = checked_record(read_json(folder / MODEL_FILE), folder / MODEL_FILE)
    enc = record["encoder"]
    parts = []
    for part in record["parts"]:
        heads = [inside(folder, p, "head") for p in part["heads"]]
        missing = [p for p in heads if not p.is_file()]
        if missing:
            raise PseudoError(f"{missing[0]}: fold head weights not found")
        parts.append(Part(round=part["round"], recipe=part["recipe"], heads=[weights_only(p) for p in heads],
                          dynamic_padding=part["dynamic_padding"], student=part.get("student") or "head",
                          finetune=part.get("finetune")))
    return ModelSpec(
        kind="export", source=folder, parts=parts, weight=record["weight"], max_len=record["max_len"],
        hidden=record["hidden"], feature_dtype=record["feature_dtype"],
        # a referenced encoder is read only from the folder the user names (--encoder), never from model.json
        encoder_folder=folder / "encoder" if enc.get("copied") else None, encoder_sha256=enc["sha256"],
        encoder_hint=None if enc.get("copied") else str(enc.get("folder")), card=record.get("card", {}),
        class_weights=record.get("class_weights"))


def export(run_dir: str | Path, out: str | Path, copy_encoder: bool = True, round: int | None = None,
           saved_model: bool = False, progress=None) -> Path:
    """Write the delivered model of `run_dir` (or round `round`'s heads) to the folder `out`; with
    `saved_model`, also a TensorFlow SavedModel of the fold heads in `<out>/saved_model` (serving.py)."""
    spec = from_run(run_dir, round)
    tuned = [p.round for p in spec.parts if p.student == "finetune"]
    if saved_model and tuned:
        raise PseudoError(f"--saved-model: round {tuned[0]} of {run_dir} fine-tuned the encoder per fold; the "
                          f"SavedModel holds fold heads on one frozen encoder (export without --saved-model, or "
                          f"--round N of a round of heads)")
    files = spec.encoder()  # the encoder must be there, and the one the heads were trained on
    out = Path(out)
    again = out.exists() and any(out.iterdir())
    if again and not (out / MODEL_FILE).is_file():
        raise PseudoError(f"{out}: exists and is not an exported model; choose an empty or new folder")
    encoder_files = ([files.config, files.weights, files.vocab,
                      *[files.folder / n for n in TOKENIZER_EXTRAS if (files.folder / n).is_file()]]
                     if copy_encoder else [])
    earlier = _earlier_export(out, keep=Path(files.folder)) if again else []
    need = check_room(out, [*(p for part in spec.parts for p in part.heads), files.vocab, *encoder_files], earlier)
    if progress is not None:
        progress.note(f"exporting {len(spec.heads)} fold weight files"
                      + (" (a fine-tuned fold's holds its own encoder)" if tuned else "")
                      + (" and the encoder" if copy_encoder else "") + f": {human_bytes(need)}"
                      + (", the co-teacher" if spec.weight > 0 else "") + (", the SavedModel" if saved_model else ""))
    if again:
        (out / MODEL_FILE).unlink()  # an export in progress is not a model until model.json is written last
        _clear_export(earlier)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for part in spec.parts:
        heads = [f"heads/round_{part.round}/fold_{i}.weights.h5" for i in range(len(part.heads))]
        for path, name in zip(part.heads, heads):
            _copy(path, out / name)
        parts.append({"round": part.round, "recipe": part.recipe, "heads": heads,
                      "dynamic_padding": part.dynamic_padding, "student": part.student, "finetune": part.finetune})
    if spec.weight > 0:
        spec.text_model(progress).save(out / "co_teacher")
    _copy(files.vocab, out / "vocab.txt")
    if copy_encoder:
        for path in encoder_files:
            _copy(path, out / "encoder" / HF_NAMES.get(path.name, path.name))
        mark_done(out / "encoder")
    if saved_model:
        from .serving import save_serving

        if progress is not None:
            progress.note(f"writing the TensorFlow SavedModel of {len(spec.heads)} fold heads and the encoder")
        shutil.rmtree(out / "saved_model", ignore_errors=True)
        save_serving(spec, out / "saved_model")
    record = {"format": FORMAT, "package": f"pseudolabel {VERSION}", "rounds": spec.rounds, "weight": spec.weight,
              "output": "blend" if spec.weight > 0 else "head", "max_len": spec.max_len, "hidden": spec.hidden,
              "feature_dtype": spec.feature_dtype, "parts": parts, "what": spec.describe(),
              "class_weights": spec.class_weights,
              "labels": ["-1", "0", "1"],
              "saved_model": {"path": "saved_model", "signature": "serving_default", "inputs": ["input_ids",
                                                                                              "attention_mask"],
                              "output": "probabilities", "blend": False} if saved_model else None,
              "encoder": {"sha256": spec.encoder_sha256, "folder": str(Path(files.folder).resolve()),
                          "copied": copy_encoder, "config": files.config_dict()},
              "card": spec.card}
    atomic_write_text(out / "README.md", model_card(record))
    atomic_write_json(out / MODEL_FILE, record)  # last: a folder without it is not a model
    return out


def check_room(out: Path, sources: list[Path], earlier: list[Path]) -> int:
    """Bytes of `sources` (what the export copies; the co-teacher and a SavedModel come on top), after checking
    that the disk holding `out` has room for them, counting what the `earlier` export's entries free: a full
    disk stops the export before anything of the earlier one is removed."""
    need = sum(Path(p).stat().st_size for p in sources)
    freed = sum(p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                for p in earlier if not p.is_symlink())
    disk = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(disk).free + freed
    if need > free:
        raise PseudoError(f"{out}: the export needs {human_bytes(need)} but only {human_bytes(free)} is free "
                          f"(free space, export elsewhere, or --reference-encoder to leave the encoder out)")
    return need


def _earlier_export(out: Path, keep: Path) -> list[Path]:
    """What an earlier export wrote into `out` (its heads, co-teacher, encoder copy, SavedModel, card), which a
    re-export removes so the folder holds only what its model.json names; anything else in the folder is left
    alone, and so is the entry holding `keep` (the encoder the run trained with, should it live in the old
    export)."""
    keep = keep.resolve()
    entries = [out / name for name in EXPORT_ENTRIES if (out / name).exists() or (out / name).is_symlink()]
    return [path for path in entries if not (keep == path.resolve() or path.resolve() in keep.parents)]


def _clear_export(earlier: list[Path]) -> None:
    for path in earlier:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def _copy(source: Path, target: Path) -> None:
    with written_aside(target) as tmp:
        shutil.copyfile(source, tmp)


def model_card(record: dict) -> str:
    """The exported folder's README: what the model is, what it was trained on, how well it scores."""
    card = record["card"]
    delivered = card.get("delivered") or {}
    data = card.get("data", {})
    options = card.get("options", {})
    enc = record["encoder"]
    parts = record["parts"]
    tuned = any(part.get("student") == "finetune" for part in parts)
    frozen = not all(part.get("student") == "finetune" for part in parts)
    what = record["what"] + (" (a char TF-IDF + logistic regression model)" if record["weight"] > 0 else "")
    averaged = "the mean of the fold models" if len(parts) == 1 else "each round's fold mean, averaged over the rounds"
    lines = [
        "# Model card", "",
        f"3-class sentiment (-1 negative, 0 neutral, 1 positive) of Chinese Weibo posts, exported by "
        f"{record['package']} from the run `{card.get('run')}`.", "",
        "## What predicts",
        f"- {what}; the probabilities are {averaged}"
        + (" blended with the text model" if record["weight"] > 0 else "")
        + (f"; a post's label is argmax(p · w) with per-class weights w (-1/0/1) "
           f"{'/'.join(f'{w:.3f}' for w in record['class_weights'])}" if record.get("class_weights") else "") + ".",
        f"- Encoder: {enc['config'].get('num_hidden_layers')} layers, hidden {enc['config'].get('hidden_size')}, "
        f"content sha256 {enc['sha256'][:16]}… ({'copied into encoder/' if enc['copied'] else 'at ' + enc['folder']}"
        f"); " + "; ".join((["frozen for the fold heads, features = hidden_states[-2]"] if frozen else [])
                           + (["fine-tuned by each fold model from these weights"] if tuned else [])) + ".",
        *[f"- Round {part['round']}: " + ("fold models, each its own fine-tuned copy of the encoder with a classifier"
                                           if part.get("student") == "finetune" else "fold heads")
          + f", recipe `{part['recipe'].get('name')}`; {record['max_len']} tokens per post"
          + ("; length-sorted chunks cut to their longest post, as the run scored" if part["dynamic_padding"] else "")
          + "." for part in parts], "",
        "## Data",
        f"- Labeled: {data.get('train_rows', '?')} posts (`{options.get('train')}`), "
        f"{options.get('folds')} folds, holdout share {options.get('holdout')}.",
        f"- Unlabeled pool: {data.get('unlabeled_rows', 0)} posts; test file: {data.get('test_rows', 0)} posts.", "",
        "## Scores (macro-F1)", "",
        "| round | OOF (fold heads) | holdout (fold ensemble) | pseudo-labels per fold | |",
        "|---|---|---|---|---|",
    ]
    for m in card.get("rounds", []):
        held = "–" if m["holdout_macro_f1"] is None else f"{m['holdout_macro_f1']:.4f}"
        mark = "collapsed" if m["collapsed"] else ("exported" if m["round"] in record["rounds"] else "")
        lines.append(f"| {m['round']} | {m['oof_macro_f1']:.4f} | {held} | {m['n_pseudo']} | {mark} |")
    lines.append("")
    if delivered:
        value = delivered.get("value")
        lines += ["## What was delivered",
                  f"{delivered.get('reason') or 'round 0 (no holdout to choose on)'}"
                  + (f"; holdout macro-F1 {value:.4f}" if value is not None else "")
                  + (f", round 0 on the same posts {delivered['round0']:.4f}" if delivered.get("round0") else "")
                  + ".", ""]
    if record.get("saved_model"):
        lines += ["## TensorFlow Serving",
                  "`saved_model/` has the signature `serving_default(input_ids, attention_mask)` (int32, [batch, "
                  f"steps], steps <= {record['max_len']}, WordPiece ids of `vocab.txt`) -> `probabilities` [batch, 3] "
                  f"(-1, 0, 1): {'the mean of the fold heads' if len(parts) == 1 else averaged}"
                  + ("; the text model of the blend is not inside (`pseudo predict` applies it)"
                     if record["weight"] > 0 else "") + ".", ""]
    lines += ["## Use", "```bash", "pseudo predict posts.csv --model <this folder> --out predictions.csv", "```",
              "```python", "from pseudolabel import load_model",
              "model = load_model('<this folder>')",
              "probs = model.predict_proba(['今天很开心'])  # (N, 3): -1, 0, 1",
              "```", ""]
    return "\n".join(lines)

