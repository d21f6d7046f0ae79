"""Shared fixtures: a tiny BERT saved to a folder and tiny real CSVs cut from the bundled sample."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("PYTEST_XDIST_WORKER"):  # xdist gives its workers COLUMNS=80; the CLI's tables need ~120
    os.environ["COLUMNS"] = "130"

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
SHARED = REPO.parent / "shared" / "data"
VOCAB = REPO / "models" / "bert-mini-random" / "vocab.txt"

# Options that keep CLI runs on tiny data to seconds.
FAST = ["--max-len", "24", "--epochs", "2", "--batch-size", "16", "--min-steps", "0", "--folds", "3"]


# The longest files first (seconds in a full run, `--durations=0`): scripts/test.sh hands each of its two
# workers one file at a time in this order (--no-loadscope-reorder), so no long file starts last while the
# other worker idles. A file not named here runs after these, in collection order.
LONGEST_FIRST = ("test_ray.py", "test_round_options.py", "test_benchmark_scarce_labels.py", "test_uncertainty.py",
                 "test_finetune.py", "test_cli_round0.py", "test_reliability.py", "test_benchmark_scale.py",
                 "test_predict.py", "test_pretrain.py", "test_budget.py", "test_resume.py", "test_auto_student.py",
                 "test_passes.py", "test_deliver.py", "test_fold_reuse.py", "test_spreadsheet_safe.py",
                 "test_benchmark_round_speed.py", "test_rounds.py", "test_pseudo_quality.py", "test_co_teacher.py", "test_benchmark_recipe_ablation.py",
                 "test_dynamic_padding.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def read_rows(path: Path, encoding: str = "utf-8") -> list[list[str]]:
    text = path.read_bytes().decode(encoding, errors="surrogateescape")
    return list(csv.reader(io.StringIO(text, newline="")))


def write_rows(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding, errors="surrogateescape"))
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 BERT with the real vocabulary, saved as a Hugging Face folder."""
    from pseudolabel.encoding.encoder import save_random_encoder

    folder = tmp_path_factory.mktemp("enc") / "tiny-bert"
    save_random_encoder(folder, VOCAB, layers=2, hidden=64, heads=2, intermediate=128, max_positions=64, seed=1)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Real posts: 90 labeled (30 per class), 60 unlabeled, 20 test rows kept in GB18030."""
    folder = tmp_path_factory.mktemp("data")
    header, *rows = read_rows(DATA / "train.labeled.csv")
    per_class: dict[str, list] = {"-1": [], "0": [], "1": []}
    for row in rows:
        if len(per_class[row[-1]]) < 30:
            per_class[row[-1]].append(row)
    labeled = [r for rows_ in per_class.values() for r in rows_]
    labeled.sort(key=lambda r: r[0])
    header_u, *pool = read_rows(DATA / "unlabeled.csv")
    header_t, *test = read_rows(DATA / "test.csv", "gb18030")
    return {
        "train": write_rows(folder / "train.csv", [header] + labeled),
        "unlabeled": write_rows(folder / "unlabeled.csv", [header_u] + pool[:60]),
        "test": write_rows(folder / "test.csv", [header_t] + test[:20], "gb18030"),
    }


def run_args(tiny_data, tiny_encoder, run_dir, *extra) -> list[str]:
    return ["run", "--train", str(tiny_data["train"]), "--test", str(tiny_data["test"]),
            "--unlabeled", str(tiny_data["unlabeled"]), "--encoder", str(tiny_encoder),
            "--run-dir", str(run_dir), *FAST, *extra]


class ArrayFeatures:
    """In-memory stand-in for cached features: `rows(idx)`, `lengths`, `shape`."""

    def __init__(self, x, lengths):
        self.x, self.lengths, self.shape = x, lengths, x.shape

    def __len__(self):
        return len(self.x)

    def rows(self, idx):
        return self.x[idx]


HOLD = "import sys, time; from pseudolabel.core.store import RunLock; lock = RunLock(sys.argv[1]).acquire('pseudo run'); " \
       "print('held', flush=True); time.sleep(600)"


def hold_in_another_process(folder):
    """A process that holds the lock of `folder` (as `pseudo run` does) until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc
