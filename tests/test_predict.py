"""`pseudo predict`, `pseudo export` and `load_model` on tiny real runs: what a run delivered applied
to new posts reproduces the run's own submission and probabilities; an export predicts the same;
streaming in chunks changes nothing; bad input is one line."""

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args, write_rows
from pseudolabel import load_model
from pseudolabel.cli.commands import app
from pseudolabel.data.posts import load_unlabeled

runner = CliRunner()
pytestmark = pytest.mark.slow


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with the console's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def blend_run(tiny_data, tiny_encoder, tmp_path_factory):
    """Round 0 delivered blended with the co-teacher, scored with dynamic padding."""
    run_dir = tmp_path_factory.mktemp("runs") / "blend"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0", "--holdout", "0.15",
                              "--deliver", "blend", "--dynamic-padding", "--folds", "2"))
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "final.json").read_text())["weight"] > 0
    return run_dir


@pytest.fixture(scope="module")
def head_run(tiny_data, tiny_encoder, tmp_path_factory):
    """Round 0's heads delivered (no holdout), every post padded to --max-len."""
    run_dir = tmp_path_factory.mktemp("runs") / "head"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "0", "--folds", "2"))
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="module")
def mean_run(tiny_data, tiny_encoder, tmp_path_factory):
    """The default delivery of a run with a pseudo-label round: rounds 0 and 1 averaged and blended evenly
    with the co-teacher; round 1 cut its chunks to their longest post, round 0 padded every post."""
    run_dir = tmp_path_factory.mktemp("runs") / "mean"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "1", "--folds", "2",
                              "--student-dynamic-padding", "--force", "--class-weights", "auto"))
    assert result.exit_code == 0, result.output
    final = json.loads((run_dir / "final.json").read_text())
    assert (final["deliver"], final["rounds"], final["weight"]) == ("mean", [0, 1], 0.5), final
    assert "final output: the mean of rounds 0, 1 blended evenly with the co-teacher — holdout macro-F1" \
        in flat(result.output)
    weights = final["class_weights"]  # searched on every labeled post: the holdout and the OOF rows
    assert weights["rows"] == len(read_rows(tiny_data["train"], "gb18030")) - 1 and weights["weights"][1] == 1.0
    assert f"cross-fitted on {weights['rows']} labeled posts against {weights['unweighted']:.4f} unweighted" \
        in flat(result.output)
    return run_dir


def predictions(path):
    rows = read_rows(path)
    assert rows[0] == ["id", "y", "p_-1", "p_0", "p_1"]
    return [r[:2] for r in rows[1:]], np.array([[float(v) for v in r[2:]] for r in rows[1:]])


def test_predict_on_the_runs_test_file_reproduces_its_submission_and_probabilities(blend_run, tiny_data, tmp_path):
    shutil.rmtree(blend_run / "co_teacher" / "refit")  # a run that did not keep its refit text model: fitted again
    out = tmp_path / "pred.csv"
    result = invoke("predict", tiny_data["test"], "--run-dir", blend_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert "20 posts" in flat(result.output) and "blended with the co-teacher" in flat(result.output)
    labels, probs = predictions(out)
    assert labels == read_rows(blend_run / "submission.csv")[1:]
    np.testing.assert_allclose(probs, np.load(blend_run / "final_test_preds.npy"), atol=1e-5)
    assert (blend_run / "co_teacher" / "refit" / "DONE").is_file()

    small = tmp_path / "small-chunks.csv"  # streamed 7 posts at a time: the same predictions (batch sizes
    assert invoke("predict", tiny_data["test"], "--run-dir", blend_run, "--out", small, "--chunk-rows", 7
                  ).exit_code == 0  # change float rounding only)
    small_labels, small_probs = predictions(small)
    assert small_labels == labels
    np.testing.assert_allclose(small_probs, probs, atol=1e-5)


def test_the_rounds_mean_predicts_as_the_run_delivered_it_from_the_run_and_from_an_export(mean_run, tiny_data,
                                                                                          tmp_path):
    """Every part of a delivered mean, each cut as its round was scored, averaged, then blended."""
    final = json.loads((mean_run / "final.json").read_text())
    metrics = json.loads((mean_run / "round_1" / "metrics.json").read_text())
    assert final["value"] == metrics["holdout_mean"]["macro_f1"]["0.5"] and metrics["holdout_mean"]["rounds"] == [0, 1]
    assert final["interval"]["rows"] > 0 and final["candidates"] == []
    out = tmp_path / "pred.csv"
    result = invoke("predict", tiny_data["test"], "--run-dir", mean_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert "the mean of rounds 0 (2 fold heads), 1 (2 fold heads) blended with the co-teacher at 0.50, labels " \
        "weighted per class" in flat(result.output)
    labels, probs = predictions(out)
    assert labels == read_rows(mean_run / "submission.csv")[1:]  # labelled with the run's class weights
    np.testing.assert_allclose(probs, np.load(mean_run / "final_test_preds.npy"), atol=1e-5)
    weights = np.array(final["class_weights"]["weights"])
    assert [int(y) for _, y in labels] == ((probs * weights).argmax(axis=1) - 1).tolist()
    texts = load_unlabeled(tiny_data["test"], None).texts
    model = load_model(mean_run)
    assert model.spec.class_weights == final["class_weights"]["weights"]
    model.spec.class_weights = [2.0, 0.5, 2.0]  # weights that move labels: predict applies them
    moved = model.predict(texts)
    assert moved.tolist() == ((model.predict_proba(texts) * [2.0, 0.5, 2.0]).argmax(axis=1) - 1).tolist()
    assert moved.tolist() != (model.predict_proba(texts).argmax(axis=1) - 1).tolist()
    model.spec.class_weights = final["class_weights"]["weights"]
    assert [p.dynamic_padding for p in model.spec.parts] == [False, True]
    heads = [np.load(mean_run / f"round_{k}" / "test_preds.npy").mean(0) for k in (0, 1)]
    tokens = model.tokens(texts)
    from pseudolabel.delivery.predict import cuts

    np.testing.assert_allclose(model.head_probs(tokens, cuts(tokens.lengths, 24, True)), (heads[0] + heads[1]) / 2,
                               atol=1e-5)
    # short posts: round 1 cuts them short, round 0 pads them to 24 steps; the mean model does both at once
    short = ["好", "今天很开心", "不行", "一般般"]
    alone = [load_model(mean_run, round=k) for k in (0, 1)]
    cut = cuts(alone[1].tokens(short).lengths, 24, True)
    assert cut.max() < 24 and not np.allclose(alone[1].head_probs(alone[1].tokens(short), cut),
                                              alone[1].head_probs(alone[1].tokens(short), np.full(4, 24)), atol=1e-6)
    np.testing.assert_allclose(model.head_probs(model.tokens(short), cut),
                               (alone[0].predict_proba(short) + alone[1].predict_proba(short)) / 2, atol=1e-6)

    folder = tmp_path / "model"
    result = invoke("export", "--run-dir", mean_run, "--out", folder, "--saved-model")
    assert result.exit_code == 0, result.output
    record = json.loads((folder / "model.json").read_text())
    assert record["rounds"] == [0, 1] and [len(p["heads"]) for p in record["parts"]] == [2, 2]
    assert record["class_weights"] == final["class_weights"]["weights"]
    card = (folder / "README.md").read_text()
    assert "each round's fold mean, averaged over the rounds" in card and "| 1 |" in card
    exported = tmp_path / "exported.csv"
    assert invoke("predict", tiny_data["test"], "--model", folder, "--out", exported).exit_code == 0
    exported_labels, exported_probs = predictions(exported)
    assert exported_labels == labels
    np.testing.assert_allclose(exported_probs, probs, atol=1e-7)
    from pseudolabel.core._tf import tf

    serve = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    served = serve(input_ids=tf.constant(tokens.input_ids), attention_mask=tf.constant(
        tokens.attention_mask.astype(np.int32)))["probabilities"].numpy()
    np.testing.assert_allclose(served, model.head_probs(tokens, np.full(len(texts), 24)), atol=5e-5)


def test_a_format_1_export_one_round_is_still_read(blend_run, tiny_data, tmp_path):
    """Folders exported before several rounds could be delivered: one round's fields at the top."""
    folder = tmp_path / "model"
    assert invoke("export", "--run-dir", blend_run, "--out", folder).exit_code == 0
    record = json.loads((folder / "model.json").read_text())
    part = record.pop("parts")[0]
    heads = []
    for i, name in enumerate(part["heads"]):
        heads.append(f"heads/fold_{i}.weights.h5")
        (folder / name).rename(folder / heads[-1])
    old = {**record, "format": 1, "round": part["round"], "recipe": part["recipe"], "heads": heads,
           "dynamic_padding": part["dynamic_padding"], "student": part["student"], "finetune": None}
    del old["rounds"], old["what"]
    (folder / "model.json").write_text(json.dumps(old))
    texts = load_unlabeled(tiny_data["test"], None).texts
    model = load_model(folder)
    assert model.spec.rounds == [0] and model.info["weight"] == record["weight"]
    np.testing.assert_allclose(model.predict_proba(texts), np.load(blend_run / "final_test_preds.npy"), atol=1e-5)


def test_the_python_api_and_another_round_give_the_runs_fold_means(head_run, blend_run, tiny_data):
    texts = load_unlabeled(tiny_data["test"], None).texts
    model = load_model(head_run)
    np.testing.assert_allclose(model.predict_proba(texts), np.load(head_run / "round_0" / "test_preds.npy").mean(0),
                               atol=1e-5)
    submitted = [int(r[1]) for r in read_rows(head_run / "submission.csv")[1:]]
    assert model.predict(texts).tolist() == submitted and model.info["output"] == "head"
    heads_alone = load_model(blend_run, round=0)  # --round: the round's heads, without the blend
    assert heads_alone.info["weight"] == 0.0
    np.testing.assert_allclose(heads_alone.predict_proba(texts),
                               np.load(blend_run / "round_0" / "test_preds.npy").mean(0), atol=1e-5)


def test_an_export_predicts_as_the_run_and_names_what_it_holds(blend_run, tiny_data, tiny_encoder, tmp_path):
    from_run = tmp_path / "from-run.csv"
    assert invoke("predict", tiny_data["test"], "--run-dir", blend_run, "--out", from_run).exit_code == 0
    for copy in (False, True):
        folder = tmp_path / f"model-{copy}"
        result = invoke("export", "--run-dir", blend_run, "--out", folder,
                        *(["--saved-model"] if copy else ["--reference-encoder"]))
        assert result.exit_code == 0, result.output
        record = json.loads((folder / "model.json").read_text())
        assert record["encoder"]["copied"] is copy and (folder / "encoder" / "tf_model.h5").is_file() is copy
        assert record["format"] == 2 and record["rounds"] == [0] and record["output"] == "blend"
        assert len(record["parts"][0]["heads"]) == 2 and record["parts"][0]["dynamic_padding"] is True
        card = (folder / "README.md").read_text()
        assert "blended with the co-teacher at" in card and "char TF-IDF + logistic regression" in card
        assert "| 0 |" in card
        out = tmp_path / f"from-model-{copy}.jsonl"
        named = [] if copy else ["--encoder", tiny_encoder]  # a referenced encoder is named by the user
        result = invoke("predict", tiny_data["test"], "--model", folder, "--out", out, "--format", "jsonl", *named)
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        labels, probs = predictions(from_run)
        assert [[r["id"], str(r["y"])] for r in rows] == labels
        np.testing.assert_allclose([[r["p_-1"], r["p_0"], r["p_1"]] for r in rows], probs, atol=1e-7)
    model = load_model(tmp_path / "model-True")
    texts = load_unlabeled(tiny_data["test"], None).texts
    np.testing.assert_allclose(model.predict_proba(texts), probs, atol=1e-7)

    # the SavedModel's signature: the fold heads' mean on ids padded to the model's length (the graph and the
    # eager encoder may round a feature to the other float16 neighbour: a few 1e-5 apart at most)
    from pseudolabel.core._tf import tf

    serve = tf.saved_model.load(str(tmp_path / "model-True" / "saved_model")).signatures["serving_default"]
    tokens = model.tokens(texts)
    served = serve(input_ids=tf.constant(tokens.input_ids), attention_mask=tf.constant(
        tokens.attention_mask.astype(np.int32)))["probabilities"].numpy()
    np.testing.assert_allclose(served, model.head_probs(tokens, np.full(len(texts), 24)), atol=5e-5)
    assert json.loads((tmp_path / "model-True" / "model.json").read_text())["saved_model"]["blend"] is False

    # an export that references its encoder: never read from the path model.json records (the folder is
    # untrusted input), named with --encoder (the same content elsewhere is fine), another one is refused
    folder = tmp_path / "model-False"
    result = invoke("predict", tiny_data["test"], "--model", folder, "--out", tmp_path / "x.csv")
    assert result.exit_code == 1 and "the encoder is not in this model folder" in flat(result.output)
    assert f"it was at {tiny_encoder.resolve()}" in flat(result.output) and "--encoder" in result.output
    result = invoke("predict", tiny_data["test"], "--model", folder, "--out", tmp_path / "x.csv",
                    "--encoder", tmp_path / "model-True" / "encoder")
    assert result.exit_code == 0, result.output
    other = tiny_encoder.parent.parent / "other-encoder"
    if not other.exists():
        from pseudolabel.encoding.encoder import save_random_encoder
        from conftest import VOCAB

        save_random_encoder(other, VOCAB, layers=2, hidden=64, heads=2, intermediate=128, max_positions=64, seed=7)
    result = invoke("predict", tiny_data["test"], "--model", folder, "--out", tmp_path / "x.csv", "--encoder", other)
    assert result.exit_code == 1 and "not the encoder the model was trained with" in flat(result.output)

    # exporting again into an export replaces it whole: no encoder copy, SavedModel or head file of the
    # earlier one stays behind (a file of the user's own does)
    folder = tmp_path / "model-True"
    (folder / "heads" / "fold_9.weights.h5").write_bytes(b"stale")
    (folder / "notes.txt").write_text("mine")
    assert invoke("export", "--run-dir", blend_run, "--out", folder, "--reference-encoder").exit_code == 0
    assert not (folder / "encoder").exists() and not (folder / "saved_model").exists()
    record = json.loads((folder / "model.json").read_text())
    heads = sorted(str(p.relative_to(folder)) for p in (folder / "heads").rglob("*.h5"))
    assert heads == sorted(record["parts"][0]["heads"]) and (folder / "notes.txt").read_text() == "mine"


def test_an_export_says_what_it_copies_and_a_full_disk_stops_it_before_the_earlier_one_is_touched(
        blend_run, tmp_path, monkeypatch):
    from pseudolabel.delivery import delivered
    from pseudolabel.encoding.features import human_bytes

    folder = tmp_path / "model"
    result = invoke("export", "--run-dir", blend_run, "--out", folder, "--reference-encoder")
    assert result.exit_code == 0, result.output
    copied = sum(p.stat().st_size for p in [*(folder / "heads").rglob("*.h5"), folder / "vocab.txt"])
    assert f"exporting 2 fold weight files: {human_bytes(copied)}, the co-teacher" in flat(result.output)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def usage_with(free):
        return lambda path: shutil._ntuple_diskusage(10 ** 12, 10 ** 12 - free, free)

    # no free space: the same export again fits in what the earlier one frees, one with the encoder does not
    monkeypatch.setattr(delivered.shutil, "disk_usage", usage_with(0))
    assert invoke("export", "--run-dir", blend_run, "--out", folder, "--reference-encoder").exit_code == 0
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}.keys() == before.keys()
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    result = invoke("export", "--run-dir", blend_run, "--out", folder)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: {folder}: the export needs ") and "--reference-encoder" in result.output
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # the earlier export stands
    result = invoke("export", "--run-dir", blend_run, "--out", tmp_path / "new" / "model")
    assert result.exit_code == 1 and not (tmp_path / "new").exists()
    monkeypatch.setattr(delivered.shutil, "disk_usage", usage_with(copied + 10 ** 9))
    assert invoke("export", "--run-dir", blend_run, "--out", tmp_path / "new" / "model").exit_code == 0


def test_a_plain_text_column_file_and_bad_input(head_run, tiny_data, tmp_path):
    texts = load_unlabeled(tiny_data["test"], None).texts
    plain = write_rows(tmp_path / "plain.csv", [["text"]] + [[t] for t in texts[:5]] + [[""]])
    out = tmp_path / "plain-pred.csv"
    result = invoke("predict", plain, "--run-dir", head_run, "--out", out)
    assert result.exit_code == 0, result.output
    labels, probs = predictions(out)
    assert [r[0] for r in labels] == ["0", "1", "2", "3", "4", "5"]  # row numbers without an id column
    want = np.load(head_run / "round_0" / "test_preds.npy").mean(0)[:5]
    np.testing.assert_allclose(probs[:5], want, atol=1e-5)

    def fails(*args, says):
        result = invoke("predict", *args)
        assert result.exit_code == 1, result.output
        line = flat(result.output)
        assert says in line and "Traceback" not in line and line.startswith("error:"), line

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    fails(empty, "--run-dir", head_run, "--out", out, says="file is empty")
    no_text = write_rows(tmp_path / "no-text.csv", [["a", "b"], ["1", "2"]])
    fails(no_text, "--run-dir", head_run, "--out", out, says="no text column")
    fails(plain, "--run-dir", head_run, "--out", out, "--round", "3", says="round must be a finished round")
    fails(plain, "--run-dir", head_run, "--model", head_run, "--out", out, says="not both")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(head_run, unfinished, symlinks=True)
    (unfinished / "final.json").unlink()
    fails(plain, "--run-dir", unfinished, "--out", out, says="the run has not finished")
    faithful = tmp_path / "faithful"
    shutil.copytree(head_run, faithful, symlinks=True)
    config = json.loads((faithful / "config.json").read_text())
    config["config"]["mode"] = "faithful"
    (faithful / "config.json").write_text(json.dumps(config))
    fails(plain, "--run-dir", faithful, "--out", out, says="made with --mode faithful")
    result = invoke("export", "--run-dir", faithful, "--out", tmp_path / "m")
    assert result.exit_code == 1 and "made with --mode faithful" in flat(result.output)
    with open(out, newline="") as fh:  # the failed calls left the last good file as it was
        assert len(list(csv.reader(fh))) == 7


def test_a_crafted_model_folder_is_refused_in_one_line(blend_run, tiny_data, tmp_path):
    """An exported folder is untrusted input: model.json's file names stay inside it, no link leads out,
    a head file holding a whole Keras model (here with a Lambda layer: code) is refused, fields are checked."""
    good = tmp_path / "good"
    assert invoke("export", "--run-dir", blend_run, "--out", good).exit_code == 0
    outside = blend_run / "round_0" / "fold_0" / "head.weights.h5"  # a real weights file outside the folder

    def crafted(name, change):
        folder = tmp_path / name
        shutil.copytree(good, folder, symlinks=True)
        change(folder)
        return folder

    def with_record(**fields):
        def change(folder):
            record = json.loads((folder / "model.json").read_text())
            (folder / "model.json").write_text(json.dumps({**record, **fields}))
        return change

    def with_heads(heads):
        def change(folder):
            record = json.loads((folder / "model.json").read_text())
            record["parts"][0]["heads"] = heads
            (folder / "model.json").write_text(json.dumps(record))
        return change

    def relink(relative, target):
        def change(folder):
            path = folder / relative
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            path.symlink_to(target)
        return change

    def lambda_head(folder):
        from pseudolabel.core._tf import keras

        model = keras.Sequential([keras.layers.Lambda(lambda x: x * 2, input_shape=(3,))])
        model.save(str(tmp_path / "lambda.h5"))
        shutil.copyfile(tmp_path / "lambda.h5", folder / "heads" / "round_0" / "fold_0.weights.h5")

    second = "heads/round_0/fold_1.weights.h5"
    cases = {
        "up": (with_heads(["../../" + "x.weights.h5", second]),
               "head '../../x.weights.h5' is not a file inside the model folder"),
        "absolute": (with_heads([str(outside.with_name("fold_0.weights.h5")), second]),
                     "is not a file inside the model folder"),
        "not-weights": (with_heads(["model.json", second]), "parts[0].heads must be a list of"),
        "head-link": (relink("heads/round_0/fold_0.weights.h5", outside),
                      f"a link to {outside.resolve()}, outside the model"),
        "encoder-link": (relink("encoder", blend_run), "outside the model folder"),
        "lambda": (lambda_head, "holds a whole Keras model"),
        "field": (with_record(max_len="140; rm -rf /"), "max_len must be a positive integer"),
        "no-parts": (with_record(parts=[]), "parts must be a list of objects"),
        "weights": (with_record(class_weights=[1, "x", 1]), "class_weights must be three positive weights"),
        "format": (with_record(format=3), "model format 3, this package reads 1 and 2"),
    }
    for name, (change, says) in cases.items():
        folder = crafted(name, change)
        before = sorted(p.name for p in tmp_path.iterdir())
        result = invoke("predict", tiny_data["test"], "--model", folder, "--out", tmp_path / "out.csv")
        line = flat(result.output)
        assert result.exit_code == 1 and line.startswith("error:") and says in line, (name, line)
        assert "Traceback" not in line and sorted(p.name for p in tmp_path.iterdir()) == before, name
        with pytest.raises(Exception, match="model folder|whole Keras model|must be|model format"):
            load_model(folder)
    # the untouched export still predicts
    assert invoke("predict", tiny_data["test"], "--model", good, "--out", tmp_path / "out.csv").exit_code == 0
