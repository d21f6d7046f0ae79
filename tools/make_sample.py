"""Rebuild the bundled sample in data/ from the full files (see data/README.md).

    python tools/make_sample.py --shared ../shared/data

Labeled rows: a stratified sample of the labeled file. Unlabeled rows: a seeded random sample
of the pool. Test rows: a seeded random sample of the published test file, always including the
rows with undecodable bytes, written back byte for byte in GB18030 as published. Each sample is
then cut to its first `--keep` rows (file order; the test file keeps its damaged rows), the size
that lets the demo run in about ten minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split


def read_rows(path: Path, encoding: str) -> list[list[str]]:
    text = path.read_bytes().decode(encoding, errors="surrogateescape")
    return list(csv.reader(io.StringIO(text, newline="")))


def write_rows(path: Path, rows: list[list[str]], encoding: str) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding, errors="surrogateescape"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--labeled", type=int, default=1500)
    parser.add_argument("--unlabeled", type=int, default=3000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", default="600,400,200", help="labeled,unlabeled,test rows kept of the samples")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    header, *rows = read_rows(args.shared / "smp_virus_train.labeled.csv", "utf-8")
    labels = [r[-1] for r in rows]
    keep, _ = train_test_split(np.arange(len(rows)), train_size=args.labeled, stratify=labels, random_state=args.seed)
    keep_labeled, keep_unlabeled, keep_test = (int(n) for n in args.keep.split(","))
    write_rows(args.out / "train.labeled.csv", [header] + [rows[i] for i in sorted(keep)][:keep_labeled], "utf-8")

    header, *rows = read_rows(args.shared / "covid_weibo_200k.unlabeled.csv", "utf-8")
    keep = np.sort(rng.choice(len(rows), args.unlabeled, replace=False))
    write_rows(args.out / "unlabeled.csv", [header] + [rows[i] for i in keep][:keep_unlabeled], "utf-8")

    header, *rows = read_rows(args.shared / "nCov_10k_test.csv", "gb18030")
    damaged = [i for i, r in enumerate(rows) if any("\udc80" <= ch <= "\udcff" for ch in "".join(r))]
    rest = np.setdiff1d(np.arange(len(rows)), damaged)
    keep = np.sort(np.concatenate([damaged, rng.choice(rest, args.test - len(damaged), replace=False)]))
    undamaged = [i for i in keep if i not in damaged]
    keep = sorted(undamaged[:keep_test - len(damaged)] + damaged)
    write_rows(args.out / "test.csv", [header] + [rows[i] for i in keep], "gb18030")
    print(f"wrote {args.out}: {keep_labeled} labeled, {keep_unlabeled} unlabeled, {len(keep)} test "
          f"({len(damaged)} test rows with undecodable bytes)")


if __name__ == "__main__":
    main()
