"""`infinite-former lm train | eval | finetune` end to end on tiny corpora (no network)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import signal
from pathlib import Path

import pytest
import torch

from hf_testing import save_tiny_gpt2
from infinite_former.cli import main
from infinite_former.data.text import LaneStream
from infinite_former.hf.training import HFMemoryLM
from infinite_former.models.lm import zero_ltm_output

WORDS = "the king queen lord lady sword crown castle night day love death war peace".split()


def write_corpus(root: Path) -> Path:
    rng = random.Random(0)
    for split, n in (("train", 4), ("valid", 1), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(40 + 15 * i))
            (root / split / f"{split}{i}.txt").write_text(text + "\n")
    return root


TINY = (
    "--seg-len 8 --batch-size 2 --steps 6 --warmup 1 --d-model 16 --n-heads 2 --d-inner 32 --mem-len 8 "
    "--num-basis 8 --num-bins 8 --no-progress --no-tensorboard --log-every 1 --eval-segments 2 "
    "--device cpu"  # exact comparisons: CPU fp32 on every machine (CUDA: tests/test_cuda.py)
).split()


def run(argv: list[str]) -> int:
    return main(["lm", *argv])


def losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "train_log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("lm") / "corpus")


@pytest.fixture(scope="module")
def ref_run(corpus) -> Path:
    out = corpus.parent / "ref"
    argv = [
        "train",
        "--data",
        str(corpus),
        "--run-dir",
        str(out),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
    ]
    assert run(argv + ["--memory-type", "infinite_sticky", "--eval-every", "3", *TINY]) == 0
    return out


def test_lm_train_and_eval_end_to_end(ref_run, corpus):
    res = json.loads((ref_run / "results.json").read_text())
    assert res["steps"] == 6 and res["memory_type"] == "infinite_sticky" and res["tokenizer"] == "bpe"
    assert "cpu_count" in res["machine"]
    test = res["eval"]["test"]
    assert set(test["per_document"]) == {"test0", "test1"}
    for r in [test, res["eval"]["valid"], *test["per_document"].values()]:
        assert math.isfinite(r["ppl"]) and 1.0 < r["ppl"] < 2 * res["vocab_size"]
        assert math.isfinite(r["bpb"]) and r["bpb"] > 0
    # bits per byte = total NLL / (ln 2 · UTF-8 bytes of the test text)
    nbytes = sum(len(p.read_bytes()) for p in (corpus / "test").glob("*.txt"))
    assert test["bytes"] == nbytes
    assert test["bpb"] == pytest.approx(test["nll_per_token"] * test["tokens"] / (math.log(2) * nbytes))
    assert [s for s, _ in losses(ref_run)] == list(range(1, 7))
    assert (ref_run / "eval_log.csv").is_file() and (ref_run / "checkpoints" / "latest").is_file()
    assert (ref_run / "tokenizer" / "tokenizer.json").is_file()
    # lm eval from the checkpoint reproduces the in-run evaluation (sticky sampling is seeded, so with the
    # same number of lanes the evaluation is deterministic)
    assert (
        run(["eval", "--run", str(ref_run), "--split", "test", "--batch-size", "2", "--device", "cpu"]) == 0
    )
    again = json.loads((ref_run / "eval_test.json").read_text())
    assert again["step"] == 6 and again["results"]["tokens"] == test["tokens"]
    assert again["results"]["ppl"] == pytest.approx(test["ppl"], rel=1e-5)


def test_lm_train_resume_matches_uninterrupted(ref_run, corpus, monkeypatch):
    out = corpus.parent / "interrupted"
    argv = [
        "train",
        "--data",
        str(corpus),
        "--run-dir",
        str(out),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
    ]
    argv += ["--memory-type", "infinite_sticky", "--eval-every", "3", *TINY]
    original = LaneStream.__iter__

    def interrupt_after_four(self):
        for i, seg in enumerate(original(self)):
            if i == 3 and seg.train:  # SIGINT while step 4 runs: checkpoint at step 4, then stop
                os.kill(os.getpid(), signal.SIGINT)
            yield seg

    with monkeypatch.context() as m:
        m.setattr(LaneStream, "__iter__", interrupt_after_four)
        assert run(argv) == 128 + signal.SIGINT  # 130: interrupted, after saving
    first = json.loads((out / "results.json").read_text())
    assert first["stopped_by_signal"] and first["steps"] == 4 and first["eval"] == {}
    assert run([*argv, "--resume"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    ref = json.loads((ref_run / "results.json").read_text())
    assert resumed["steps"] == 6
    got, want = losses(out), losses(ref_run)
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-6)
    assert resumed["eval"]["test"]["ppl"] == pytest.approx(ref["eval"]["test"]["ppl"], rel=1e-6)


def tiny_gpt2(folder: Path, corpus: Path) -> Path:
    from infinite_former.data.text import load_documents

    return save_tiny_gpt2(folder, [d.text for d in load_documents(corpus / "train")])


def test_lm_finetune_and_hf_eval_end_to_end(corpus):
    gpt2 = tiny_gpt2(corpus.parent / "hf", corpus)
    out = corpus.parent / "ft"
    argv = [
        "finetune",
        "--model",
        str(gpt2),
        "--data",
        str(corpus),
        "--run-dir",
        str(out),
        "--block-size",
        "8",
    ]
    argv += [
        "--batch-size",
        "2",
        "--steps",
        "3",
        "--num-basis",
        "8",
        "--num-samples",
        "8",
        "--eval-splits",
        "test",
        "--device",
        "cpu",
    ]
    assert run(argv + ["--no-progress", "--no-tensorboard", "--log-every", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and res["block_size"] == 8 and res["lr"] == 5e-5 and res["ltm_lr"] == 2.5e-4
    assert res["sticky"] is True  # the default: sticky memories
    test = res["eval"]["test"]
    assert set(test) == {"base", "memory"}
    assert test["base"]["tokens"] == test["memory"]["tokens"]  # same blocks, same targets
    for r in test.values():
        assert math.isfinite(r["ppl"]) and math.isfinite(r["bpb"]) and r["ppl"] > 1
    with open(out / "train_log.csv") as f:
        aux = [float(r["aux_loss"]) for r in csv.DictReader(f)]
    assert aux[0] == 0 and all(a > 0 for a in aux[1:])  # KL regularizer on once the memory holds a block
    # separate learning rates: GPT-2's weights 5e-5, the new LTM weights 2.5e-4
    trainer_state = torch.load(out / "checkpoints" / "step-00000003" / "trainer.pt", weights_only=True)
    assert [g["initial_lr"] for g in trainer_state["optimizer"]["param_groups"]] == [5e-5, 2.5e-4]
    from infinite_former.hf import InfiniteGPT2LMHeadModel

    ft = InfiniteGPT2LMHeadModel.from_pretrained(out / "model")
    assert (
        ft.config.block_size == 8 and ft.config.ltm["num_basis"] == 8 and ft.config.ltm["kl_weight"] == 1e-6
    )
    # lm eval --hf on the saved model reproduces the fine-tune's own evaluation (save/load round trip)
    assert (
        run(["eval", "--hf", str(out / "model"), "--split", "test", "--batch-size", "2", "--device", "cpu"])
        == 0
    )
    again = json.loads((out / "model" / "eval_test.json").read_text())
    assert again["base_model"] == str(gpt2) and again["block_size"] == 8
    for name in ("base", "memory"):
        assert again["results"][name]["ppl"] == pytest.approx(test[name]["ppl"], rel=1e-5)
    # a block longer than GPT-2's positions is refused with a clear message
    assert run(["eval", "--hf", str(out / "model"), "--block-size", "64", "--data", str(corpus)]) == 2
    # the checkpoint (weights, optimizer, GPT-2 + memory state, lanes) resumes
    resume = [*argv, "--no-progress", "--no-tensorboard", "--resume", "--eval-splits"]
    assert run([a if a != "3" else "4" for a in resume]) == 2  # other settings: refused (--override)
    assert run(resume + ["--override", "steps=4"]) == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]
    # --no-memory: the same recipe for GPT-2 alone (the fair fine-tuned baseline), one learning rate
    plain = corpus.parent / "ft_plain"
    argv = [a if a != str(out) else str(plain) for a in argv]
    assert run(argv + ["--no-memory", "--no-progress", "--no-tensorboard"]) == 0
    res = json.loads((plain / "results.json").read_text())
    assert res["memory"] is False and set(res["eval"]["test"]) == {"base", "finetuned"}
    assert res["eval"]["test"]["base"]["ppl"] == pytest.approx(test["base"]["ppl"])  # the same base GPT-2


def test_lm_finetune_from_the_training_free_memory_validates_periodically(corpus):
    """--training-free: the fine-tune starts from the memory read through the model's own attention (no
    new weights, one learning rate), saved and loaded back as such; --eval-every: the validation
    split at those steps (eval_log.csv), the same as evaluating the saved model on those blocks."""
    gpt2 = tiny_gpt2(corpus.parent / "hf-free", corpus)
    out = corpus.parent / "ft-free"
    argv = ["finetune", "--model", str(gpt2), "--data", str(corpus), "--run-dir", str(out), "--block-size", "8",
            "--batch-size", "2", "--steps", "4", "--num-basis", "8", "--num-samples", "8", "--eval-splits", "",
            "--device", "cpu", "--no-progress", "--no-tensorboard", "--training-free", "gibbs:softmax",
            "--eval-every", "2", "--eval-segments", "3"]  # fmt: skip
    assert run(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["training_free"] == {"density": "gibbs", "alpha": 0.5, "combine": "softmax"}
    trainer_state = torch.load(out / "checkpoints" / "step-00000004" / "trainer.pt", weights_only=True)
    assert [g["initial_lr"] for g in trainer_state["optimizer"]["param_groups"]] == [
        5e-5
    ]  # no memory weights
    with open(out / "eval_log.csv") as f:
        valid = {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "valid/loss"}
    assert sorted(valid) == [2, 4]
    from infinite_former.data.text import DocumentLanes, load_corpus_split, tokenize_documents
    from infinite_former.data.tokenizer import hf_tokenizer
    from infinite_former.hf import load_model
    from infinite_former.training.evaluation import evaluate

    ft = load_model(out / "model").eval()
    assert ft.training_free.combine == "softmax" and ft.memory_parameters() == []
    tok = hf_tokenizer(out / "model")
    lanes = DocumentLanes(tokenize_documents(load_corpus_split(corpus, "valid"), tok), 2, 8, tok.eos_id,
                          loop=False, train=False)  # fmt: skip
    again = evaluate(HFMemoryLM(ft), list(LaneStream(lanes, 0, 2))[:3], "cpu")
    assert again["loss"] == pytest.approx(valid[4], rel=1e-5)
    with pytest.raises(ValueError, match="--training-free and --no-memory exclude each other"):
        dataclasses.replace(settings_of(argv), no_memory=True)
    with pytest.raises(ValueError, match="expected DENSITY"):
        dataclasses.replace(settings_of(argv), training_free="gibbs:lots")


def settings_of(argv: list[str]):
    from infinite_former.cli import build_parser
    from infinite_former.experiments.runs import settings_from_args

    args = build_parser().parse_args(["lm", *argv])
    return settings_from_args(args.lm_settings, args)


def test_bad_inputs_fail_before_training(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    argv = ["train", "--run-dir", str(tmp_path / "r"), "--tokenizer", "bytes", *TINY]
    assert run([argv[0], "--data", str(tmp_path / "empty"), *argv[1:]]) == 2
    assert "holds no *.txt files" in capsys.readouterr().err
    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    (bad / "latin1.txt").write_bytes(b"caf\xe9")
    assert run([argv[0], "--data", str(tmp_path / "bad"), *argv[1:]]) == 2
    assert "latin1.txt" in capsys.readouterr().err
    good = write_corpus(tmp_path / "good")
    assert run([*argv, "--data", str(good), "--set", "max_segment_len=4"]) == 2
    assert "seg_len=8 is longer than the model's positions (max_positions=4)" in capsys.readouterr().err
    assert run([*argv, "--data", str(good), "--set", "no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert run([*argv, "--data", str(good), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written for a run that cannot start


def test_ltm_zero_init_output_starts_as_transformer_xl():
    """--ltm-zero-init-output: the LTM contributes nothing at init (same logits with an emptied LTM)."""
    from infinite_former.models import InfiniteFormerLM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0, mem_len=4,
        memory_type="infinite_sticky", ltm=dict(num_basis=8, num_samples=8, num_bins=8),
    )  # fmt: skip
    model = InfiniteFormerLM(cfg).eval()
    x = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        _, state = model(x, None)
        _, state = model(x, state)  # tokens have left the STM: the LTM is non-empty
        assert int(state.ltm[0].length.min()) > 0
        without_ltm = [s.reset(torch.ones(2, dtype=torch.bool)) for s in state.ltm]
        empty = dataclasses.replace(state, memory=dataclasses.replace(state.memory, ltm=without_ltm))
        before = model(x, state)[0].logits
        assert not torch.allclose(
            before, model(x, empty)[0].logits, atol=1e-4
        )  # default init: LTM adds noise
        zero_ltm_output(model)
        torch.testing.assert_close(model(x, state)[0].logits, model(x, empty)[0].logits)


def test_lane_stream_shards_rows_across_processes():
    """Each process keeps its own rows of the same global lanes (rank r: rows r·b .. r·b + b − 1)."""
    from infinite_former.data.text import Document, DocumentLanes, tokenize_documents
    from infinite_former.data.tokenizer import bytes_tokenizer

    tok = bytes_tokenizer()
    corpus = tokenize_documents([Document(f"d{i}", "ab" * (3 + i)) for i in range(6)], tok)
    full = list(LaneStream(DocumentLanes(corpus, 4, 4, tok.eos_id, loop=False)))
    ranks = [list(LaneStream(DocumentLanes(corpus, 4, 4, tok.eos_id, loop=False), r, 2)) for r in (0, 1)]
    assert len(full) == len(ranks[0]) == len(ranks[1]) > 2
    for seg, a, b in zip(full, *ranks):
        assert torch.equal(torch.cat([a.tokens, b.tokens]), seg.tokens)
        assert torch.equal(torch.cat([a.reset, b.reset]), seg.reset)
        assert torch.equal(torch.cat([a.loss_mask, b.loss_mask]), seg.loss_mask)


def test_gpt2_memory_lane_reset_keeps_the_new_documents_first_block(corpus):
    """A lane reset at a block boundary empties that row's memory, and the new document's first block
    is absorbed into its LTM afterwards (regression: reset at position 0 used to drop it)."""
    from infinite_former.hf import InfiniteGPT2LMHeadModel

    gpt2 = corpus.parent / "hf_reset"
    if not (gpt2 / "gpt2").exists():
        tiny_gpt2(gpt2, corpus)
    model = InfiniteGPT2LMHeadModel.from_pretrained(gpt2 / "gpt2", block_size=8, num_basis=8, num_samples=8)
    wrapped = HFMemoryLM(model.eval())
    x = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        state = wrapped.init_state(2).reset(torch.tensor([True, True]))  # both lanes start a document
        _, state = wrapped(x, state)
        _, state = wrapped(x, state)
        assert state.ltm_tokens.tolist() == [8, 8]  # the first block of each document was absorbed
        state = state.reset(torch.tensor([True, False]))  # lane 0 starts a new document
        out, state = wrapped(x, state)
        assert state.ltm_tokens.tolist() == [0, 16]  # lane 0's old block dropped, lane 1 kept
        fresh, _ = wrapped(x[:1], None)
        torch.testing.assert_close(out.logits[0], fresh.logits[0], atol=1e-5, rtol=1e-4)
        _, state = wrapped(x, state)
        assert state.ltm_tokens.tolist() == [8, 24]


def tiny_llama(folder: Path, corpus: Path) -> Path:
    """A tiny random Llama with its own fast tokenizer (EOS '</s>'), saved like any hub folder."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from infinite_former.data.text import load_documents
    from infinite_former.data.tokenizer import train_bpe_tokenizer

    backend = train_bpe_tokenizer([d.text for d in load_documents(corpus / "train")], vocab_size=300).backend
    backend.add_special_tokens(["</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder / "llama")
    tok.save_pretrained(folder / "llama")
    return folder / "llama"


def test_lm_finetune_takes_any_supported_model(corpus):
    llama = tiny_llama(corpus.parent / "hf-llama", corpus)
    out = corpus.parent / "ft-llama"
    argv = ["finetune", "--model", str(llama), "--data", str(corpus), "--run-dir", str(out), "--block-size", "8",
            "--batch-size", "2", "--steps", "2", "--num-basis", "8", "--num-samples", "8", "--eval-splits", "test",
            "--device", "cpu", "--no-progress", "--no-tensorboard", "--sampling", "uniform"]  # fmt: skip
    assert run(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sticky"] is False  # --sampling uniform reached the memory config
    test = res["eval"]["test"]
    assert set(test) == {"base", "memory"} and test["base"]["tokens"] == test["memory"]["tokens"]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in test.values())
    from infinite_former.data.tokenizer import hf_tokenizer
    from infinite_former.hf import load_model

    ft = load_model(out / "model")  # saved with its memory: loads back with it
    assert type(ft).__name__ == "LlamaForCausalLM" and len(ft.ltm) == 2 and ft.memory_config.block_size == 8
    assert ft.memory_config.ltm.sticky is False  # saved with uniform sampling
    assert hf_tokenizer(out / "model").eos_id == hf_tokenizer(llama).eos_id
    eval_out = out / "eval.json"
    argv = ["eval", "--hf", str(out / "model"), "--split", "test", "--batch-size", "2", "--device", "cpu"]
    assert run(argv + ["--out", str(eval_out)]) == 0
    again = json.loads(eval_out.read_text())["results"]
    assert again["memory"]["ppl"] == pytest.approx(test["memory"]["ppl"], rel=1e-5)


def test_empty_eval_splits_mean_none():
    """`--eval-splits ""` (as `--valid-split ""`) evaluates nothing; it is not a split named ""."""
    import argparse

    from infinite_former.experiments.flags import eval_splits

    p = argparse.ArgumentParser()
    p.add_argument("--eval-splits", nargs="*", default=["valid", "test"])
    assert eval_splits(p.parse_args([])) == ["valid", "test"]
    assert eval_splits(p.parse_args(["--eval-splits", ""])) == []
    assert eval_splits(p.parse_args(["--eval-splits"])) == []
    assert eval_splits(p.parse_args(["--eval-splits", "test", ""])) == ["test"]


def test_lm_settings_are_the_flags_mapped_once(tmp_path):
    """The parser only maps flags onto LMTrainSettings / LMFinetuneSettings (defaults from there);
    bad settings are refused when the settings are built, named as the flag."""
    from infinite_former.cli import build_parser
    from infinite_former.experiments.lm import LMFinetuneSettings, LMTrainSettings
    from infinite_former.experiments.runs import settings_from_args

    parser = build_parser()
    args = parser.parse_args(["lm", "train", "--data", "d", "--seg-len", "16", "--num-basis", "8"])
    assert settings_from_args(args.lm_settings, args) == LMTrainSettings(
        data="d", seg_len=16, ltm={"num_basis": 8}
    )
    args = parser.parse_args(["lm", "finetune", "--data", "d", "--no-memory", "--eval-splits", "test"])
    direct = LMFinetuneSettings(data="d", no_memory=True, eval_splits=("test",))
    assert settings_from_args(args.lm_settings, args) == direct
    assert direct.memory() == {"block_size": 512, "memory_layers": []}
    with pytest.raises(ValueError, match="--seg-len must be an int >= 1"):
        LMTrainSettings(data="d", seg_len=0)
    with pytest.raises(ValueError, match="'sticky' is decided by --memory-type"):
        LMTrainSettings(data="d", ltm={"sticky": False})
    with pytest.raises(ValueError, match="--override changes a resumed run"):
        LMFinetuneSettings(data="d", override=("steps=3",))
    with pytest.raises(ValueError, match="--epochs must be a number > 0"):
        LMFinetuneSettings(data="d", epochs=0.0)


def test_pair_results_read_the_02_keys():
    """evaluate_hf_pair's generic keys (base / memory / finetuned); results written by 0.2 (gpt2 /
    gpt2_memory / gpt2_finetuned) are read under the new names."""
    from infinite_former.hf.training import pair_result

    new = {"base": {"ppl": 3.0}, "memory": {"ppl": 2.0}}
    old = {"gpt2": {"ppl": 3.0}, "gpt2_finetuned": {"ppl": 2.5}}
    assert pair_result(new, "memory") == {"ppl": 2.0} and pair_result(old, "base") == {"ppl": 3.0}
    assert pair_result(old, "finetuned") == {"ppl": 2.5}
    with pytest.raises(KeyError, match="gpt2_memory"):
        pair_result(old, "memory")
    with pytest.raises(ValueError, match="key must be one of"):
        pair_result(new, "gpt2")
