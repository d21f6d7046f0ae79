"""CSV files a user opens in a spreadsheet (submission.csv, pseudo_labels.csv, `pseudo predict`'s output):
an id or text that a spreadsheet would run as a formula gets a leading `'` (OWASP's advice against CSV
injection); numbers and labels stay as they are; `--raw` writes the cells as they came in."""

import pytest
from typer.testing import CliRunner

from conftest import read_rows, run_args, write_rows
from pseudolabel.cli.commands import app
from pseudolabel.core.store import spreadsheet_safe

runner = CliRunner()
CRAFTED = ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tx", "\r=y", "-5", "+3.5", "1e-3"]
SAFE = ["'=1+1", "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1:A9)", "'\tx", "'\r=y", "-5", "+3.5", "1e-3"]
IDS = [c for c in CRAFTED if not c[0].isspace()]  # ids are read stripped: a leading tab or CR does not reach a file
SAFE_IDS = [spreadsheet_safe(c) for c in IDS]


def test_a_formula_cell_gets_a_quote_and_a_number_does_not():
    assert [spreadsheet_safe(c) for c in CRAFTED] == SAFE
    assert [spreadsheet_safe(c) for c in ("plain", "微博 =x", "", 7, -1)] == ["plain", "微博 =x", "", 7, -1]


@pytest.mark.slow
def test_run_select_and_predict_write_spreadsheet_safe_files_and_raw_keeps_them(tiny_data, tiny_encoder, tmp_path):
    header_t, *test = read_rows(tiny_data["test"], "gb18030")
    header_u, *pool = read_rows(tiny_data["unlabeled"])
    for rows in (test, pool):
        for row, crafted in zip(rows, IDS):
            row[0] = crafted
    pool[0][3] = "=HYPERLINK(\"http://example.invalid\",\"点这里\")"
    data = {**tiny_data, "test": write_rows(tmp_path / "test.csv", [header_t] + test, "gb18030"),
            "unlabeled": write_rows(tmp_path / "pool.csv", [header_u] + pool)}
    run_dir = tmp_path / "run"
    select_all = ["--co-teacher", "0", "--strategy", "top-k", "--top-k", "60", "--force"]
    result = runner.invoke(app, run_args(data, tiny_encoder, run_dir, "--rounds", "1", *select_all))
    assert result.exit_code == 0, result.output
    submission = read_rows(run_dir / "submission.csv")
    assert [r[0] for r in submission[1:len(SAFE_IDS) + 1]] == SAFE_IDS
    assert all(r[1] in ("-1", "0", "1") for r in submission[1:])  # labels as they are
    assert [r[0] for r in read_rows(run_dir / "round_0" / "submission.csv")[1:len(SAFE_IDS) + 1]] == SAFE_IDS
    selected = {r[0]: r for r in read_rows(run_dir / "round_1" / "pseudo_labels.csv")[1:]}
    assert set(SAFE_IDS) <= set(selected) and not set(IDS) - set(SAFE_IDS) & set(selected)
    assert selected["'=1+1"][1] == "'" + pool[0][3]

    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(data["test"]), "--run-dir", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r[0] for r in read_rows(out)[1:len(SAFE_IDS) + 1]] == SAFE_IDS
    result = runner.invoke(app, ["predict", str(data["test"]), "--run-dir", str(run_dir), "--out", str(out), "--raw"])
    assert result.exit_code == 0, result.output
    assert [r[0] for r in read_rows(out)[1:len(IDS) + 1]] == IDS

    raw_dir = tmp_path / "raw"
    result = runner.invoke(app, run_args(data, tiny_encoder, raw_dir, "--rounds", "1", "--raw", *select_all))
    assert result.exit_code == 0, result.output
    assert [r[0] for r in read_rows(raw_dir / "submission.csv")[1:len(IDS) + 1]] == IDS
    assert set(IDS) <= {r[0] for r in read_rows(raw_dir / "round_1" / "pseudo_labels.csv")[1:]}
    # --raw is no result option: the same run continues with or without it
    again = runner.invoke(app, run_args(data, tiny_encoder, raw_dir, "--rounds", "1", *select_all))
    assert again.exit_code == 0 and "round 1: finished earlier, reused" in again.output, again.output
    # pseudo select writes the next round's pseudo_labels.csv as the run did (raw), or safe where asked
    result = runner.invoke(app, ["select", "--run-dir", str(run_dir), "--top-k", "60", "--force"])
    assert result.exit_code == 0, result.output
    assert set(SAFE_IDS) <= {r[0] for r in read_rows(run_dir / "round_2" / "pseudo_labels.csv")[1:]}
    result = runner.invoke(app, ["select", "--run-dir", str(run_dir), "--top-k", "60", "--force", "--raw"])
    assert result.exit_code == 0, result.output
    assert set(IDS) <= {r[0] for r in read_rows(run_dir / "round_2" / "pseudo_labels.csv")[1:]}
