"""Masked-language-model pretraining on a GPU with PyTorch, producing an encoder folder `pseudo` loads.

`pseudo pretrain` trains with TensorFlow; this script is for a machine with a GPU and PyTorch but no
TensorFlow. It keeps `pseudo pretrain`'s recipe exactly (same tokenizer, corpus de-duplication,
held-out split, length-grouped batch order, masks and learning-rate schedule, all from
`pseudolabel.encoding.pretrain`), and only the framework doing the steps differs. Three steps:

    # 1. here (pseudo's venv): tokenize the corpus once into a compact array file
    python tools/pretrain_torch.py prepare ../shared/data/covid_weibo_200k.unlabeled.csv \
        --vocab models/bert-mini-random --out corpus.npz
    # 2. on the GPU machine (PyTorch + transformers): train for a wall-clock budget
    python tools/pretrain_torch.py train corpus.npz --out shards/ --budget 420
    # 3. here again: assemble the shards into an encoder folder and check it loads
    python tools/pretrain_torch.py assemble shards/ --vocab models/bert-mini-random --out models/NAME

The step count is fixed after a timed start (`--budget` seconds of training in all), so the
learning-rate schedule still ends at zero; `pretrain.json` records the count, losses and machine.
Weights travel as safetensors shards under 16 MB each (large tensors split by rows): no pickles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import queue
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pseudolabel.encoding.pretrain import Batches, PretrainConfig, learning_rate_at, split_corpus  # noqa: E402

SHARD_BYTES = 14 * 2**20


# ---------------------------------------------------------------- 1. prepare (pseudo's tokenizer)


def prepare(args) -> None:
    from pseudolabel.encoding.encoder import find_encoder, load_tokenizer
    from pseudolabel.encoding.pretrain import load_corpus, token_lists

    files = find_encoder(args.vocab)
    tokenizer = load_tokenizer(files)
    texts, described = load_corpus(args.corpus, None)
    ids = token_lists(texts, tokenizer, args.max_len)
    lengths = np.array([len(x) for x in ids], np.int32)
    meta = {"command": " ".join(["python", *sys.argv]), "corpus": described, "max_len": args.max_len, "vocab_size": len(tokenizer.get_vocab()),
            "mask_id": int(tokenizer.mask_token_id), "special": sorted(int(i) for i in tokenizer.all_special_ids),
            "vocab_sha256": hashlib.sha256(files.vocab.read_bytes()).hexdigest()}
    np.savez_compressed(args.out, ids=np.concatenate(ids).astype(np.uint16), lengths=lengths,
                        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    print(f"{len(texts):,} distinct posts, {lengths.sum():,} tokens -> {args.out} "
          f"({Path(args.out).stat().st_size / 2**20:.1f} MiB)")


def _read_tokens(path: str) -> tuple[list[np.ndarray], np.ndarray, dict]:
    with np.load(path, allow_pickle=False) as data:
        flat, lengths = data["ids"].astype(np.int64), data["lengths"]
        meta = json.loads(data["meta"].tobytes().decode())
    ends = np.cumsum(lengths)
    return [flat[e - n:e] for e, n in zip(ends, lengths)], lengths, meta


# ---------------------------------------------------------------- 2. train (PyTorch)


def _shards(state: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Tensors in groups under SHARD_BYTES; a larger tensor is split by rows into `name::partK`."""
    pieces: list[tuple[str, np.ndarray]] = []
    for name, value in state.items():
        if value.nbytes <= SHARD_BYTES:
            pieces.append((name, value))
            continue
        parts = math.ceil(value.nbytes / SHARD_BYTES)
        for k, chunk in enumerate(np.array_split(value, parts, axis=0)):
            pieces.append((f"{name}::part{k}", np.ascontiguousarray(chunk)))
    shards, current, size = [], {}, 0
    for name, value in pieces:
        if current and size + value.nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    return shards + ([current] if current else [])


def _save_shards(out: Path, model, record: dict) -> None:
    from safetensors.numpy import save_file

    state = {k: v.detach().float().cpu().numpy() for k, v in model.bert.state_dict().items()}
    for old in out.glob("weights-*.safetensors"):
        old.unlink()
    for i, shard in enumerate(_shards(state)):
        save_file(shard, str(out / f"weights-{i:02d}.safetensors"))
    (out / "record.json").write_text(json.dumps(record, indent=1) + "\n")


def _save_check(out: Path, model, rows: list[np.ndarray], device) -> None:
    """hidden_states[-2] of a few posts in fp32 inference mode, for `assemble` to compare against."""
    import torch
    from safetensors.numpy import save_file

    width = max(len(r) for r in rows)
    ids = torch.from_numpy(np.stack([np.pad(r, (0, width - len(r))) for r in rows]).astype(np.int64))
    attention = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, comparable to the CPU's
    with torch.no_grad():
        states = model.bert(input_ids=ids.to(device), attention_mask=attention.to(device),
                            token_type_ids=torch.zeros_like(ids).to(device), output_hidden_states=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    model.train()
    save_file({"input_ids": ids.numpy(), "attention_mask": attention.numpy(),
               "features": states.hidden_states[-2].float().cpu().numpy()}, str(out / "check.safetensors"))


def train(args) -> None:
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import BertConfig, BertForMaskedLM

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids, lengths, meta = _read_tokens(args.tokens)
    config = PretrainConfig(layers=args.layers, hidden=args.hidden, heads=args.heads, intermediate=args.intermediate,
                            max_len=meta["max_len"], batch_size=args.batch_size, steps=args.max_steps,
                            learning_rate=args.lr, warmup=0.0, seed=args.seed, eval_rows=args.eval_rows,
                            checkpoint_every=args.eval_every)
    config.check()
    train_rows, eval_rows = split_corpus(len(ids), config.eval_rows, config.seed)
    special, mask_id, vocab_size = set(meta["special"]), meta["mask_id"], meta["vocab_size"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    bert_config = BertConfig(vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
                             num_attention_heads=config.heads, intermediate_size=config.intermediate,
                             max_position_embeddings=max(512, config.max_len), hidden_dropout_prob=config.dropout,
                             attention_probs_dropout_prob=config.dropout)
    model = BertForMaskedLM(bert_config).to(device)
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("LayerNorm", "bias"))]
    rest = [p for n, p in model.named_parameters() if any(k in n for k in ("LayerNorm", "bias"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.learning_rate,
                                  betas=(0.9, 0.999), eps=1e-6, fused=device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    hidden = config.hidden

    def tensors(batch: dict) -> tuple:
        return tuple(torch.from_numpy(np.asarray(batch[k], np.int64)).to(device, non_blocking=True)
                     for k in ("input_ids", "attention_mask", "positions", "labels"))

    def loss_of(input_ids, attention, positions, labels):
        with amp:
            seq = model.bert(input_ids=input_ids, attention_mask=attention,
                             token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            logits = model.cls(seq.reshape(-1, hidden)[positions])
        return F.cross_entropy(logits.float(), labels)

    batches = Batches(ids, lengths, train_rows, eval_rows, config, special, mask_id, vocab_size)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        for batch in batches.held_out():
            total += float(loss_of(*tensors(batch))) * len(batch["labels"])
            count += len(batch["labels"])
        model.train()
        return total / count

    def produce(q: queue.Queue, stop: threading.Event) -> None:  # builds the batches ahead of the GPU
        for step in range(config.steps):
            batch = batches.train(step)
            while not stop.is_set():
                try:
                    q.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    q: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()
    worker = threading.Thread(target=produce, args=(q, stop), daemon=True)
    worker.start()

    record = {"settings": {"config": None, "tokens": str(args.tokens), "vocab_sha256": meta["vocab_sha256"],
                           "prepared_by": meta.get("command")},
              "command": " ".join(["python", *sys.argv]), "corpus": meta["corpus"], "n_texts": len(ids),
              "n_train": len(train_rows), "n_eval": len(eval_rows), "steps_done": 0, "seconds": 0.0,
              "trainer": {"framework": f"torch {torch.__version__}, transformers {transformers.__version__}",
                          "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                          "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
                          "budget_s": args.budget},
              "train_loss": [], "eval_loss": [{"step": 0, "loss": evaluate()}]}
    print(f"{len(ids):,} posts ({len(train_rows):,} train, {len(eval_rows):,} held out) on "
          f"{record['trainer']['device']}; held-out loss at step 0 {record['eval_loss'][0]['loss']:.3f}", flush=True)
    check_rows = [ids[r] for r in eval_rows[:4]]
    warm = args.warmup_steps
    if not 100 < args.timing_steps < args.max_steps:
        raise SystemExit("--timing-steps must be above 100 and below --max-steps")
    started = time.time()
    schedule = replace(config, steps=config.steps, warmup=warm / config.steps)
    timed_from, window, step = None, [], 0
    while step < schedule.steps:
        lr = learning_rate_at(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_of(*tensors(q.get()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 20 == 0:
            window.append(float(loss.detach()))
        if step == 100:
            timed_from = time.time()
        if step == args.timing_steps:  # fix the schedule's length from the measured rate
            rate = (step - 100) / (time.time() - timed_from)
            left = args.budget - (time.time() - started)
            total = max(int(min(args.max_steps, step + rate * left * 0.97)), warm + 1, step + 1)
            schedule = replace(config, steps=total, warmup=warm / total)
            print(f"{rate:.1f} steps/s: schedule fixed at {total:,} steps "
                  f"({total * config.batch_size / len(train_rows):.1f} passes over the corpus)", flush=True)
        at_eval = step % config.checkpoint_every == 0 or step == schedule.steps
        if (step % 200 == 0 or at_eval) and window:
            record["train_loss"].append({"step": step, "loss": float(np.mean(window))})
            window = []
        if at_eval:
            held = evaluate()
            record["eval_loss"].append({"step": step, "loss": held})
            record["steps_done"], record["seconds"] = step, time.time() - started
            record["settings"]["config"] = asdict(schedule)
            _save_shards(out, model, record)
            _save_check(out, model, check_rows, device)  # so that an interrupted run still assembles
            print(f"step {step:,}/{schedule.steps:,} lr {lr:.2e} train {record['train_loss'][-1]['loss'] if record['train_loss'] else float('nan'):.3f} "
                  f"held-out {held:.3f} ({time.time() - started:.0f} s)", flush=True)
    stop.set()
    record["finished"] = True
    record["seconds"] = time.time() - started
    record["settings"]["config"] = asdict(schedule)
    _save_shards(out, model, record)
    _save_check(out, model, check_rows, device)
    print(f"done: {step:,} steps in {record['seconds']:.0f} s (+{started - t0:.0f} s setup); "
          f"held-out MLM loss {record['eval_loss'][-1]['loss']:.3f}", flush=True)


# ---------------------------------------------------------------- 3. assemble (pseudo's loader)


def merge_shards(folder: Path) -> dict[str, np.ndarray]:
    """The state dict the shards of `_shards` were cut from."""
    from safetensors.numpy import load_file

    paths = sorted(folder.glob("weights-*.safetensors"))
    if not paths:
        raise SystemExit(f"{folder}: no weights-*.safetensors shards")
    parts: dict[str, dict[int, np.ndarray]] = {}
    for path in paths:
        for key, value in load_file(str(path)).items():
            name, _, part = key.partition("::part")
            parts.setdefault(name, {})[int(part or 0)] = value
    return {name: np.concatenate([p[k] for k in sorted(p)], axis=0) if len(p) > 1 else p[0]
            for name, p in parts.items()}


def assemble(args) -> None:
    """Write the encoder folder in a temporary folder, check its features against the trainer's
    through pseudo's own loader, and only then move its files into `--out`."""
    import shutil
    import tempfile

    from safetensors.numpy import load_file, save_file
    from transformers import BertConfig

    from pseudolabel.encoding.encoder import CARD_NAME, FrozenEncoder, find_encoder

    shards = Path(args.shards)
    state = merge_shards(shards)
    record = json.loads((shards / "record.json").read_text())
    cfg = record["settings"]["config"]
    vocab = find_encoder(args.vocab).vocab
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".assemble-") as tmp:
        tmp = Path(tmp)
        BertConfig(vocab_size=state["embeddings.word_embeddings.weight"].shape[0], hidden_size=cfg["hidden"],
                   num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                   intermediate_size=cfg["intermediate"], max_position_embeddings=max(512, cfg["max_len"]),
                   hidden_dropout_prob=cfg["dropout"],
                   attention_probs_dropout_prob=cfg["dropout"]).to_json_file(str(tmp / "config.json"))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(vocab, tmp / "vocab.txt")
        card = {"weights": "pretrained (masked-language-model)", "steps": record["steps_done"],
                "layers": cfg["layers"], "hidden": cfg["hidden"],
                "corpus": [d["path"] for d in record["corpus"]], "record": "pretrain.json"}
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        encoder = FrozenEncoder(find_encoder(tmp))  # pseudo's loader: raises if an encoder weight is missing
        check = load_file(str(shards / "check.safetensors"))
        ours = encoder(check["input_ids"], check["attention_mask"])
        real = check["attention_mask"].astype(bool)
        diff = float(np.abs(ours[real] - check["features"][real]).max())
        if diff > 1e-2:  # a wrong weight mapping differs by O(1); TF32 matmuls (older runs) by ~1e-3
            raise SystemExit(f"{shards}: the assembled encoder's features differ from the trainer's by {diff:.2e}")
        record["assembled"] = {"command": " ".join(["python", *sys.argv]), "features_max_abs_difference": diff}
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if (out / "tf_model.h5").exists():  # weights of an earlier encoder in the same folder
            (out / "tf_model.h5").unlink()
        for path in tmp.iterdir():
            path.replace(out / path.name)
    files = find_encoder(out)
    print(f"{files.describe()}: features match the trainer's (max abs difference {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="tokenize a corpus with pseudo's tokenizer")
    p.add_argument("corpus", nargs="+")
    p.add_argument("--vocab", required=True, help="encoder folder whose vocabulary to use")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train", help="MLM training with PyTorch (GPU if present)")
    p.add_argument("tokens")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=420.0, help="seconds of training in all")
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--timing-steps", type=int, default=400, help="step at which the schedule's length is fixed")
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=2000)
    p = sub.add_parser("assemble", help="shards -> encoder folder, checked through pseudo's loader")
    p.add_argument("shards")
    p.add_argument("--vocab", required=True, help="encoder folder whose vocabulary the corpus was tokenized with")
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    {"prepare": prepare, "train": train, "assemble": assemble}[args.what](args)


if __name__ == "__main__":
    main()
