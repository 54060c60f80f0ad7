"""Every experiment that reports a test number trains on training data and tests on held-out data.

A spy on the token embedding (a global forward pre-hook on nn.Embedding) records every batch of
token ids a model reads, and whether the model was training or evaluating. The corpora give each
split its own alphabet (sorting: its own counter-based sequences), so every token row tells which
split it came from. Tiny configurations: each experiment runs end to end in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hf_testing import save_tiny_gpt2
from infinite_former.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
# one alphabet per split (no ASCII letters: special tokens such as <|endoftext|> are ASCII)
ALPHABETS = {"train": "αβγδεζηθ", "valid": "бвгджзкл", "test": "אבגדהוזח"}


@contextmanager
def embedded_rows(min_vocab: int = 64) -> Iterator[list[tuple[bool, torch.Tensor]]]:
    """Record (module.training, token ids (batch, T)) of every token embedding called meanwhile
    (embeddings with fewer than min_vocab rows, e.g. GPT-2's positions, are not token embeddings)."""
    seen: list[tuple[bool, torch.Tensor]] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if isinstance(module, nn.Embedding) and module.num_embeddings >= min_vocab and args:
            ids = args[0]
            seen.append((module.training, ids.detach().cpu().reshape(-1, ids.shape[-1]).clone()))

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def splits_of(text: str) -> set[str]:
    return {split for split, letters in ALPHABETS.items() if any(ch in letters for ch in text)}


def words(split: str, rng: random.Random, n: int) -> str:
    letters = ALPHABETS[split]
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(n))


def check_rows(rows, decode, evaluated: set[str], trained: bool = True) -> None:
    """Training reads only the train split; evaluation reads only the `evaluated` splits, and all of them."""
    train_seen, eval_seen = set(), set()
    for training, ids in rows:
        for row in ids.tolist():
            (train_seen if training else eval_seen).update(splits_of(decode(row)))
    assert train_seen == ({"train"} if trained else set()), f"training read {sorted(train_seen)}"
    assert eval_seen == evaluated, f"evaluation read {sorted(eval_seen)}, expected {sorted(evaluated)}"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------- sorting


def test_sorting_trains_on_train_sequences_and_tests_on_held_out_ones(tmp_path):
    from infinite_former.data.sorting import SortingConfig, materialize
    from infinite_former.experiments.sort import SortSettings, train_and_test

    s = SortSettings(
        models=("xl",),
        lengths=(40,),
        num_symbols=4,
        segment_len=16,
        mem_len=8,
        ltm={"num_basis": 8},
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_inner=32,
        steps=3,
        batch_size=2,
        eval_sequences=4,
        valid_sequences=2,
        jobs=1,
        device="cpu",
        out=str(tmp_path),
        progress=False,
    )
    with embedded_rows(min_vocab=1) as rows:
        res = train_and_test(s, "xl", "xl", (40,), resume=False)
    assert res["steps"] == 3 and res["test"]["40"]["num_targets"] == 4 * 4

    # each split's first 64 sequences as byte strings; a segment row (16 tokens, PAD stripped)
    # is a window of exactly one of them
    pool = {
        split: [bytes(seq) for seq in materialize(SortingConfig(40, 4, s.seed, split), np.arange(64))]
        for split in ("train", "valid", "test")
    }
    pad = SortingConfig(40, 4).pad_id

    def where(row: list[int]) -> set[str]:
        window = bytes(t for t in row if t != pad)
        return {split for split, seqs in pool.items() if any(window in seq for seq in seqs)}

    train_seen = [where(row) for training, ids in rows if training for row in ids.tolist()]
    eval_seen = [where(row) for training, ids in rows if not training for row in ids.tolist()]
    assert train_seen and all(w == {"train"} for w in train_seen)
    assert eval_seen and all(w in ({"test"}, {"valid"}) for w in eval_seen)
    # all 4 held-out test sequences were read, from their first segment to their answer
    test_windows = {
        bytes(t for t in row if t != pad) for training, ids in rows if not training for row in ids.tolist()
    }
    for seq in pool["test"][:4]:
        assert any(w and seq.startswith(w) for w in test_windows) and any(
            w and seq[:-1].endswith(w) for w in test_windows
        )


# -------------------------------------------------------------------------------------------- LM


def write_text_corpus(root: Path) -> Path:
    rng = random.Random(0)
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            (root / split / f"{split}{i}.txt").write_text(words(split, rng, 30 + 10 * i) + "\n")
    return root


def bytes_decode(row: list[int]) -> str:
    return bytes(t for t in row if t < 256).decode("utf-8", errors="ignore")


def test_lm_train_evaluates_the_test_split(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus")
    argv = ["lm", "train", "--data", str(corpus), "--run-dir", str(tmp_path / "run"), "--tokenizer", "bytes"]
    argv += "--seg-len 8 --batch-size 2 --steps 4 --warmup 1 --d-model 16 --n-heads 2 --d-inner 32".split()
    argv += (
        "--mem-len 8 --num-basis 8 --set ltm.num_bins=8 --no-progress --no-tensorboard --device cpu".split()
    )
    argv += "--valid-split valid --eval-every 2 --eval-segments 2 --eval-splits test".split()
    with embedded_rows() as rows:
        assert cli_main(argv) == 0
    check_rows(rows, bytes_decode, {"valid", "test"})
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["eval"]) == {"test"} and set(res["eval"]["test"]["per_document"]) == {"test0", "test1"}
    # the test evaluation read every test byte but the last of each document (a target only)
    test_bytes = sum(len(p.read_bytes()) for p in (corpus / "test").iterdir())
    read = sum(
        sum(t < 256 for t in row)
        for training, ids in rows
        if not training
        for row in ids.tolist()
        if splits_of(bytes_decode(row)) == {"test"}
    )
    assert read >= test_bytes - 2, (read, test_bytes)


@pytest.mark.parametrize("variant", ["xl_equal", "infinite_sticky", "infinite_reach"])
def test_lm_benchmark_trains_on_train_and_tests_on_test(tmp_path, monkeypatch, variant):
    """benchmarks/lm_shakespeare.py's own run (train_settings, shared tokenizer, lm train) at toy size."""
    from infinite_former.data.tokenizer import TextTokenizer

    bench = load_benchmark("lm_shakespeare")
    monkeypatch.setattr(bench, "DATA", str(write_text_corpus(tmp_path / "corpus")))
    tiny = dict(steps=3, batch_size=2, seg_len=8, d_model=16, n_heads=2, d_inner=32, mem_len=8, num_basis=8)
    monkeypatch.setattr(bench, "S", {**bench.S, **tiny, "vocab_size": 300, "warmup": 1, "eval_batch_size": 2})
    with embedded_rows() as rows:
        record = bench.run_one(variant, 0, tmp_path / "runs")
    check_rows(rows, TextTokenizer.load(tmp_path / "runs" / "tokenizer").decode, {"test"})
    assert sorted(record["per_document"]) == ["test0", "test1"]


# ------------------------------------------------------------------- GPT-2 fine-tune (benchmark path)


def tiny_gpt2(folder: Path, corpus: Path) -> Path:
    """A random GPT-2 whose BPE knows every split's alphabet (its tokenizer decodes all of them)."""
    from infinite_former.data.text import load_documents

    return save_tiny_gpt2(folder, [d.text for split in ALPHABETS for d in load_documents(corpus / split)])


@pytest.fixture(scope="module")
def gpt2_benchmark(tmp_path_factory):
    """benchmarks/gpt2_finetune.py at toy size (its settings S and data patched, its own settings
    and code): every variant fine-tuned for seed 0, each under its own spy."""
    root = tmp_path_factory.mktemp("gpt2_finetune")
    corpus = write_text_corpus(root / "corpus")
    gpt2 = tiny_gpt2(root / "hf", corpus)
    bench = load_benchmark("gpt2_finetune")
    patch = pytest.MonkeyPatch()
    patch.setattr(bench, "DATA", str(corpus))
    patch.setattr(
        bench, "S", {**bench.S, **dict(block_size=8, batch_size=2, steps=3, num_basis=8, num_samples=8)}
    )
    patch.setattr(bench, "RECORDS", root / "records")
    runs = {}
    for variant in bench.VARIANTS:
        settings = bench.finetune_settings(variant, 0, root / "runs" / f"{variant}-seed0", gpt2)
        with embedded_rows() as rows:
            runs[variant] = (rows, bench.lm_cli.lm_finetune(settings))
    yield bench, gpt2, root, runs
    patch.undo()


@pytest.mark.parametrize("variant", ["no_memory", "infinite", "infinite_sticky"])
def test_gpt2_finetune_benchmark_trains_on_train_and_tests_on_test(gpt2_benchmark, variant):
    """lm finetune with the benchmark's command line reads the training split to train, the test
    split for the fine-tuned model and the base GPT-2 alike."""
    from transformers import AutoTokenizer

    bench, gpt2, root, runs = gpt2_benchmark
    rows, res = runs[variant]
    check_rows(rows, AutoTokenizer.from_pretrained(gpt2).decode, {"test"})
    assert set(res["eval"]) == {"test"}
    test = res["eval"]["test"]
    assert set(test) == {"base", "finetuned" if variant == "no_memory" else "memory"}
    assert {tuple(sorted(r["per_document"])) for r in test.values()} == {("test0", "test1")}


def test_gpt2_finetune_controls_evaluate_the_test_split(gpt2_benchmark):
    """`gpt2_finetune.py controls` (previous block in the window, memory wiped) evaluates the
    fine-tuned models and the base model on the test split only."""
    from transformers import AutoTokenizer

    bench, gpt2, root, runs = gpt2_benchmark
    argv = ["controls", "--seeds", "0", "--runs-dir", str(root / "runs"), "--base", str(gpt2)]
    with embedded_rows() as rows:
        assert bench.main(argv) == 0
    check_rows(rows, AutoTokenizer.from_pretrained(gpt2).decode, {"test"}, trained=False)
    for name in bench.CONTROLS:
        record = json.loads((root / "records" / f"{name}-seed0.json").read_text())
        assert sorted(record["per_document"]) == ["test0", "test1"], name


# -------------------------------------------------------------------------------------- dialogue


def write_dialogues(root: Path) -> Path:
    from infinite_former.data.dialogue import Dialogue, Turn, write_jsonl

    rng = random.Random(1)
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        dialogues = [
            Dialogue(
                document=words(split, rng, 12),
                turns=[Turn(speaker, words(split, rng, 4)) for speaker in ("a", "b", "a")],
                doc_id=f"{split}{i}",
                name=f"{split}{i}",
            )
            for i in range(n)
        ]
        write_jsonl(dialogues, root / f"{split}.jsonl")
    return root


def test_dialogue_trains_on_train_and_tests_on_test_dialogues(tmp_path):
    from infinite_former.data.dialogue import load_dialogues
    from infinite_former.data.tokenizer import TextTokenizer

    corpus = write_dialogues(tmp_path / "data")
    run = tmp_path / "run"
    argv = [
        "dialogue",
        "train",
        "--data",
        str(corpus),
        "--run-dir",
        str(run),
        "--steps",
        "3",
        "--warmup",
        "1",
    ]
    argv += "--n-layer 1 --n-embd 16 --n-head 2 --block-size 32 --vocab-size 300 --num-basis 8".split()
    argv += "--num-samples 8 --no-progress --no-tensorboard --max-new-tokens 2 --threads 1".split()
    argv += ["--eval-splits", "test"]
    with embedded_rows() as rows:
        assert cli_main(argv) == 0
    tok = TextTokenizer.load(run / "tokenizer")
    # generated tokens are fed back one at a time: they are the model's, not the data's
    read = [(training, ids) for training, ids in rows if training or ids.shape[-1] > 1]
    check_rows(read, tok.decode, {"test"})
    res = json.loads((run / "results.json").read_text())
    test_replies = {t.text for d in load_dialogues(corpus, "test") for t in d.turns[1:]}
    references = [r["reference"] for r in res["eval"]["test"]["replies"]]
    assert sorted(references) == sorted(test_replies)
