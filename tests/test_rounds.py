"""Pseudo-label rounds: invariants over rounds, `pseudo select`, `pseudo report`, stop reasons."""

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args
from pseudolabel.cli.commands import app
from pseudolabel.data.metrics import scores
from pseudolabel.data.posts import load_labeled, load_unlabeled
from pseudolabel.rounds.select import NOT_SELECTED, select

pytestmark = pytest.mark.slow  # every test here is a CLI run or reads one

runner = CliRunner()
SELECT = ["--co-teacher", "0", "--strategy", "top-k", "--top-k", "20", "--force"]  # the head's own view


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def load(path):
    return np.load(path, allow_pickle=False)


@pytest.fixture(scope="module")
def two_rounds(tiny_data, tiny_encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "mean"
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--holdout", "0.2",
                              "--pseudo-source", "mean", *SELECT))
    assert result.exit_code == 0, result.output
    return run_dir, result


def test_three_rounds_and_table(two_rounds):
    run_dir, result = two_rounds
    for k in range(3):
        assert (run_dir / f"round_{k}" / "DONE").is_file()
    assert "stop reason: max_rounds" in result.output
    assert "not leak-free" in result.output  # mean-source rounds 1, 2 are marked


def test_folds_fixed_and_validation_parts_human_only(two_rounds, tiny_data):
    run_dir, _ = two_rounds
    folds = load(run_dir / "round_0" / "folds.npy")
    labels = load_labeled(tiny_data["train"]).labels
    assert (folds == -1).sum() == 18  # 20% holdout, stratified
    assert np.bincount(labels[folds == -1], minlength=3).tolist() == [6, 6, 6]
    pool_ids = set(load_unlabeled(tiny_data["unlabeled"]).ids)
    human_ids = set(load_labeled(tiny_data["train"]).ids)
    for k in range(3):
        for i in range(3):
            fold = run_dir / f"round_{k}" / f"fold_{i}"
            valid = load(fold / "valid_idx.npy")
            train = load(fold / "train_idx.npy")
            np.testing.assert_array_equal(valid, np.flatnonzero(folds == i))  # same folds every round
            assert not set(valid) & set(train) and not set(train) & set(np.flatnonzero(folds == -1))
            record = json.loads((fold / "fold.json").read_text())
            assert record["n_valid"] == len(valid)
            assert record["n_train_pseudo"] == (20 if k else 0)
        if k:
            rows = read_rows(run_dir / f"round_{k}" / "pseudo_labels.csv")
            assert rows[0] == ["id", "text", "label", "confidence"] and len(rows) == 21
            assert {r[0] for r in rows[1:]} <= pool_ids and not {r[0] for r in rows[1:]} & human_ids


def test_human_labels_never_change(two_rounds, tiny_data):
    run_dir, _ = two_rounds
    labels = load_labeled(tiny_data["train"]).labels
    folds = load(run_dir / "round_0" / "folds.npy")
    truth = np.bincount(labels[folds >= 0], minlength=3)
    for k in range(3):
        metrics = json.loads((run_dir / f"round_{k}" / "metrics.json").read_text())
        np.testing.assert_array_equal(np.array(metrics["oof"]["confusion"]).sum(axis=1), truth)
        assert metrics["holdout"]["n"] == 18 and metrics["leak_free"]["holdout"] is True
        assert metrics["leak_free"]["oof"] is (k == 0)


def test_selection_follows_previous_round_and_first_selected_record(two_rounds):
    run_dir, _ = two_rounds
    first = None
    for k in (1, 2):
        unmask = load(run_dir / f"round_{k - 1}" / "unmask_preds.npy")
        want = select(unmask.mean(axis=0), "top-k", 0.9, top_k=20)
        got = load(run_dir / f"round_{k}" / "pseudo_labels.npy")
        assert got.shape == (3, 60)
        for row in got:
            np.testing.assert_array_equal(row, want)
        record = load(run_dir / f"round_{k}" / "selected_round.npy")
        if first is None:
            assert set(np.unique(record)) <= {-1, 1} and (record == 1).sum() == 20
        else:
            assert (record[first == 1] == 1).all()  # the round a row was first selected never moves
            assert ((record == 2) == ((got[0] != NOT_SELECTED) & (first == -1))).all()
        first = record
    m2 = json.loads((run_dir / "round_2" / "metrics.json").read_text())
    prev, cur = load(run_dir / "round_1" / "pseudo_labels.npy")[0], load(run_dir / "round_2" / "pseudo_labels.npy")[0]
    both = (prev != NOT_SELECTED) & (cur != NOT_SELECTED)
    assert m2["n_changed"] == int(((prev != cur) & both).sum())


def test_report_json_reproduces_the_run(two_rounds):
    run_dir, _ = two_rounds
    out = json.loads(invoke("report", "--run-dir", str(run_dir), "--json").output)
    assert out["stop_reason"] == "max_rounds" and [r["round"] for r in out["rounds"]] == [0, 1, 2]
    for r in out["rounds"]:
        metrics = json.loads((run_dir / f"round_{r['round']}" / "metrics.json").read_text())
        assert r["oof_macro_f1"] == metrics["oof"]["macro_f1"]
        assert r["holdout_macro_f1"] == metrics["holdout"]["macro_f1"]
        assert set(r) >= {"round", "oof_macro_f1", "oof_f1_per_class", "holdout_macro_f1", "leak_free", "n_pseudo",
                          "pseudo_per_class", "n_changed", "seconds"}
    assert out["rounds"][1]["n_pseudo"] == 20 and sum(out["rounds"][1]["pseudo_per_class"].values()) == 20
    text = invoke("report", "--run-dir", str(run_dir)).output
    assert "stop reason: max_rounds" in text and f"{out['rounds'][0]['oof_macro_f1']:.4f}" in text
    assert out["finished"] is True and out["running"] is False and out["resume_command"] is None
    assert out["rounds_planned"] == 2 and out["final"]["round"] in (0, 1, 2)


def test_a_run_logged_to_a_file_prints_a_line_per_fold_with_its_score(two_rounds):
    _, result = two_rounds  # CliRunner's output is not a terminal: no bars, plain lines
    for k in range(3):
        for i in range(3):
            line = next(line for line in result.output.splitlines() if line.startswith(f"round {k} fold {i}: "))
            assert "validation macro-F1 0." in line and "monitor macro-F1" in line and line.endswith(" s")
    assert "fold 3" not in result.output  # folds are numbered as their folders, fold_0..fold_2
    assert "encode labeled: 90 done in" in result.output and "round 1 score pool: 60 done in" in result.output


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]


def test_html_report_is_one_self_contained_page_of_charts(two_rounds, tiny_data, tmp_path):
    run_dir, _ = two_rounds
    page_path = tmp_path / "report.html"
    result = invoke("report", "--run-dir", str(run_dir), "--html", str(page_path))
    assert result.exit_code == 0 and "(6 charts)" in result.output
    page = page_path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    assert parser.tags.count("figure") == 6 and parser.tags.count("svg") == 6
    assert parser.links == [] and "<script" not in page  # nothing to fetch, nothing to run
    for caption in ("Macro-F1 per round", "Pseudo-labels per class", "confidence per round", "Reliability",
                    "Confusion matrix"):
        assert caption in page
    metrics = json.loads((run_dir / "round_2" / "metrics.json").read_text())
    assert f"{metrics['oof']['macro_f1']:.4f}" in page  # the table holds the run's own numbers
    interval = json.loads((run_dir / "final.json").read_text())["interval"]  # what was delivered, how surely
    assert f"95% interval {interval['value'][0]:.4f}–{interval['value'][1]:.4f}" in page
    # the confusion matrix is the delivered output's on the holdout: the rounds' mean blended with the co-teacher
    final = json.loads((run_dir / "final.json").read_text())
    held = load(run_dir / "round_0" / "folds.npy") == -1
    mean = np.mean([load(run_dir / f"round_{k}" / "holdout_preds.npy").mean(axis=0) for k in final["rounds"]], axis=0)
    probs = (1 - final["weight"]) * mean + final["weight"] * load(run_dir / "co_teacher" / "holdout_preds.npy").mean(0)
    expected = scores(load_labeled(tiny_data["train"]).labels[held], probs)["confusion"]
    assert final["rounds"] == [0, 1, 2] and final["confusion"] == expected and sum(map(sum, expected)) == 18
    assert "Confusion matrix of what is delivered (the mean of rounds 0, 1, 2) on the 18-post holdout" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium here: the page was checked by parsing only")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,2400",
                    f"--screenshot={shot}", page_path.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels[..., :3].std() > 0.05  # not blank: charts drawn


def test_select_refuses_bad_input_and_collapsed_rounds(tiny_data, tiny_encoder, tmp_path, two_rounds):
    run_dir, _ = two_rounds
    bad = invoke("select", "--run-dir", str(run_dir), "--threshold", "1.5")
    assert bad.exit_code == 1 and "threshold must be in (0, 1], got 1.5" in bad.output
    bad = invoke("select", "--run-dir", str(run_dir), "--strategy", "best")
    assert bad.exit_code == 1 and "strategy must be one of" in bad.output
    bad = invoke("select", "--run-dir", str(tmp_path / "none"))
    assert bad.exit_code == 1 and "not a run directory" in bad.output
    done = invoke("select", "--run-dir", str(run_dir), "--round", "1", "--force")
    assert done.exit_code == 1 and "round 2 is finished" in done.output


def test_changed_options_refuse_to_continue(two_rounds, tiny_data, tiny_encoder):
    run_dir, _ = two_rounds
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--holdout", "0.2", *SELECT[:-1],
                              "--pseudo-weight", "0.5"))
    assert result.exit_code == 1
    assert "pseudo_weight (saved 1.0, now 0.5)" in result.output and "--restart" in result.output


def test_changed_recipe_refuses_to_continue(two_rounds, tiny_data, tiny_encoder, monkeypatch):
    """A run made under other recipe settings (e.g. an older default) does not silently continue."""
    from dataclasses import replace

    from pseudolabel.heads import model

    run_dir, _ = two_rounds
    monkeypatch.setitem(model.RECIPES, "default", replace(model.RECIPES["default"], learning_rate=0.01))
    result = invoke(*run_args(tiny_data, tiny_encoder, run_dir, "--rounds", "2", "--holdout", "0.2",
                              "--pseudo-source", "mean", *SELECT))
    assert result.exit_code == 1
    assert "learning_rate (saved 0.0003, now 0.01)" in result.output

def test_the_round_table_is_printed_once_and_no_cell_is_cut_at_100_columns(two_rounds):
    from rich.console import Console

    from pseudolabel.cli.report import load_rounds, round_cells, rounds_table

    run_dir, result = two_rounds
    assert result.output.count("labeled prior -1 / 0 / 1") == 1  # the run's table, once; a line per round
    for k in range(3):
        assert sum(line.startswith(f"round {k} finished: OOF macro-F1 0.") for line in result.output.splitlines()) == 1
    rounds = load_rounds(run_dir)[0]
    many = rounds + [{**m, "round": m["round"] + 3} for m in rounds]  # six rounds: more than fit side by side
    for shown, width in ((rounds, 100), (rounds, 130), (many, 100), (rounds, 400)):
        console = Console(width=width, record=True)
        console.print(rounds_table(shown, "run", width=width))
        text = console.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width, text
        lines = text.splitlines()
        for m in shown:
            for cell in round_cells(m):  # every cell whole on one line
                assert any(str(cell) in line for line in lines), (str(cell), text)
        assert sum("human+pseudo" in line for line in lines) == (1 if width == 400 else 2 if shown is many else 1)


def test_the_confusion_caption_names_what_is_delivered_and_its_unweighted_labels():
    from pseudolabel.cli.htmlreport import delivered_confusion

    final = {"round": 1, "rounds": [0, 1], "weight": 0.5, "output": "blend", "deliver": "mean",
             "confusion": [[1, 0, 0], [0, 2, 1], [0, 0, 3]]}
    matrix, caption = delivered_confusion([], final)
    assert matrix == final["confusion"]
    assert caption == ("Confusion matrix of what is delivered (the mean of rounds 0, 1 blended evenly with the "
                       "co-teacher) on the 7-post holdout.")
    matrix, caption = delivered_confusion([], {**final, "class_weights": {"weights": [1.25, 1.0, 0.75]}})
    assert caption.endswith("7-post holdout (labels before the per-class decision weights).")
