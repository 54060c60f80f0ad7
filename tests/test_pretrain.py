"""benchmarks/pretrain.py at toy size: a GPT-2 folder that lm finetune's loaders read back."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_pretrain_writes_a_gpt2_folder_that_loads(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain", ROOT / "benchmarks" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "plays"
    for split, n in (("train", 30), ("test", 8)):
        (data / split).mkdir(parents=True)
        text = "".join(
            f"KING. Speech number {i} of the {split} play, and the court replies.\n" for i in range(n)
        )
        (data / split / "play.txt").write_text(text * 4)
    out = tmp_path / "gpt2"
    args = ["--data", str(data), "--out", str(out), "--steps", "12", "--warmup", "1", "--lr", "3e-3", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--n-positions", "32", "--vocab-size", "300", "--eval-windows", "4"]  # fmt: skip
    assert module.main(args) == 0
    report = json.loads((out / "pretrain.json").read_text())
    assert report["parameters"] > 0 and len(report["loss_curve"]) >= 1 and report["test_ppl_context"] > 1
    assert report["loss_curve"][-1][1] < report["loss_curve"][0][1]  # it learns

    from transformers import GPT2LMHeadModel

    from infinite_former.data.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer(out)
    model = GPT2LMHeadModel.from_pretrained(out)
    ids = torch.tensor([tok.encode("KING. Speech number 3")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert tok.eos_id == model.config.eos_token_id


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plays(root: Path, splits: tuple[tuple[str, int], ...]) -> Path:
    """Two toy plays per split (``n`` speeches each, repeated 3 times)."""
    data = root / "plays"
    for split, n in splits:
        (data / split).mkdir(parents=True, exist_ok=True)
        for play in ("a", "b"):
            text = "".join(
                f"KING. Speech {i} of play {play}, {split}; the court replies.\n" for i in range(n)
            )
            (data / split / f"{play}.txt").write_text(text * 3)
    return data


def _tiny_gpt2(root: Path, data: Path) -> Path:
    """pretrain.py's GPT-2 at toy size (1 layer, d 16, 32 positions, 4 steps)."""
    base = root / "gpt2"
    args = ["--data", str(data), "--out", str(base), "--steps", "4", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--n-positions", "32", "--vocab-size", "300", "--eval-windows", "2"]  # fmt: skip
    assert _load("pretrain").main(args) == 0
    return base


def test_gpt2_finetune_benchmark_end_to_end_at_toy_size(tmp_path, monkeypatch):
    """pretrain -> fine-tune (no memory / uniform / sticky) x 2 seeds -> summarize, at toy size."""
    data = _plays(tmp_path, (("train", 30), ("test", 8)))
    base = _tiny_gpt2(tmp_path, data)

    bench = _load("gpt2_finetune")
    monkeypatch.setattr(bench, "DATA", str(data))
    monkeypatch.setattr(bench, "RECORDS", tmp_path / "records")
    monkeypatch.setattr(bench, "OUT", tmp_path / "gpt2_finetune.json")
    monkeypatch.setitem(bench.S, "block_size", 16)
    monkeypatch.setitem(bench.S, "batch_size", 2)
    monkeypatch.setitem(bench.S, "steps", 2)
    monkeypatch.setitem(bench.S, "num_basis", 8)
    monkeypatch.setitem(bench.S, "num_samples", 8)
    monkeypatch.setitem(bench.PASSKEY, "distances", [4, 40])
    monkeypatch.setitem(bench.PASSKEY, "trials", 1)
    run = ["run", "--seeds", "0", "1", "--base", str(base), "--runs-dir", str(tmp_path / "runs")]
    assert bench.main(run) == 0
    rec = json.loads((tmp_path / "records" / "infinite-seed1.json").read_text())
    assert rec["sticky"] is False and set(rec["passkey"]["per_distance"]) == {"4", "40"}
    assert json.loads((tmp_path / "records" / "infinite_sticky-seed0.json").read_text())["sticky"] is True
    controls = ["controls", "--seeds", "0", "1", "--runs-dir", str(tmp_path / "runs"), "--base", str(base)]
    assert bench.main(controls) == 0
    assert bench.main(["summarize", "--expected-seeds", "0", "1", "--base", str(base)]) == 0
    res = json.loads((tmp_path / "gpt2_finetune.json").read_text())
    assert res["complete"] and res["paired_seeds"] == [0, 1]
    assert set(res["models"]) == {"base", "no_memory", "infinite", "infinite_sticky", "no_memory_window",
                                  "infinite_wiped", "infinite_sticky_wiped", "base_window"}  # fmt: skip
    for name in ("no_memory", "infinite", "infinite_sticky"):
        m = res["models"][name]
        assert [s["seed"] for s in m["seeds"]] == [0, 1]
        assert m["test_ppl"] == pytest.approx(sum(s["test_ppl"] for s in m["seeds"]) / 2)
    # the same pretrained model scored on the same blocks in every run; the fine-tunes differ from it
    assert res["models"]["base"]["test_ppl"] > 1
    assert res["models"]["no_memory"]["test_ppl"] != res["models"]["base"]["test_ppl"]
    pairs = {(p["a"], p["b"]): p for p in res["pairs"]}
    assert ("infinite_sticky", "no_memory") in pairs and ("no_memory", "base") in pairs
    assert ("infinite_sticky", "no_memory_window") in pairs and ("infinite", "infinite_wiped") in pairs
    # the same weights with more context: the window model is scored on the same tokens
    window = json.loads((tmp_path / "records" / "no_memory_window-seed0.json").read_text())
    tuned = json.loads((tmp_path / "records" / "no_memory-seed0.json").read_text())
    assert {d: v["tokens"] for d, v in window["per_document"].items()} == {
        d: v["tokens"] for d, v in tuned["per_document"].items()
    }
    p = pairs[("infinite_sticky", "no_memory")]
    assert p["ci95"][0] <= p["mean_diff"] <= p["ci95"][1]
    assert res["base_model"]["parameters"] > 0 and "base (whole context window)" in res["passkey_accuracy"]
    # a second run skips what is done
    assert bench.main(run) == 0


def test_pretrain_llama_then_the_training_free_and_probe_benchmarks_at_toy_size(tmp_path):
    """pretrain.py --arch llama -> a rotary-position folder; training_free.py and probes.py read it
    (any causal LM folder), name their results after its model type, and the memories start as the
    base model: on a document's first block every training-free variant's NLL is the base model's."""
    data = _plays(tmp_path, (("train", 30), ("test", 6)))
    llama = tmp_path / "llama"
    args = ["--data", str(data), "--arch", "llama", "--out", str(llama), "--steps", "4", "--n-layer", "1",
            "--n-embd", "16", "--n-head", "2", "--n-positions", "64", "--vocab-size", "300", "--eval-windows", "2"]  # fmt: skip
    assert _load("pretrain").main(args) == 0
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(llama).model_type == "llama"
    out = tmp_path / "tf.json"
    argv = ["--model", str(llama), "--data", str(data), "--block-size", "16", "--max-tokens", "80",
            "--variants", "gibbs:0.5,gaussian:softmax", "--out", str(out)]  # fmt: skip
    assert _load("training_free").main(argv) == 0
    res = json.loads(out.read_text())
    assert res["model_type"] == "llama"
    assert set(res["models"]) == {"base", "window", "free_gibbs_a0.5", "free_gaussian_softmax"}
    first = [p for p in res["buckets"] if p.get("blocks") == [0, 1]]
    assert len(first) == 2 and all(p["mean_diff"] == 0 for p in first)  # an empty memory: the base model
    later = [p for p in res["buckets"] if p.get("blocks") == [1, 2]]
    assert all(p["mean_diff"] != 0 for p in later)  # the memory is read from the second block on
    out = tmp_path / "probes.json"
    argv = ["--model", str(llama), "--block-size", "16", "--gaps", "0,40", "--span", "8", "--copy-trials", "3",
            "--lengths", "300", "--depths", "0", "--trials", "1", "--free", "gibbs:softmax", "--out", str(out)]  # fmt: skip
    assert _load("probes").main(argv) == 0
    res = json.loads(out.read_text())["results"]
    assert res["base"]["passkey"] == {"refused": "every prompt exceeds 64 positions"}
    assert set(res["base"]["copy"]["per_gap"]) == {"0", "40"} and res["memory_zero"]["memory"] is True
    assert 0.0 <= res["free_gibbs_softmax"]["passkey"]["score"] <= 1.0


def test_training_free_finetune_benchmark_at_toy_size(tmp_path, monkeypatch):
    """free / zero / no_memory starts x 2 seeds -> summarize: validation at step 0 and every eval step,
    the training-free start differs from the zero one at step 0 (which equals no memory), pairs."""
    data = _plays(tmp_path, (("train", 30), ("valid", 6), ("test", 6)))
    base = _tiny_gpt2(tmp_path, data)
    bench = _load("training_free_finetune")
    for key, value in dict(block_size=16, batch_size=2, num_basis=8, num_samples=8).items():
        monkeypatch.setitem(bench.S, key, value)
    monkeypatch.setattr(bench, "EVAL_EVERY", 1)
    monkeypatch.setattr(bench, "EVAL_SEGMENTS", 3)
    common = ["--model", str(base), "--data", str(data), "--steps", "2", "--records", str(tmp_path / "rec")]
    assert bench.main(["run", *common, "--seeds", "0", "1", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert bench.main(["summarize", *common, "--out", str(tmp_path / "out.json")]) == 0
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["paired_seeds"] == [0, 1] and set(res["valid_loss"]) == {"free", "zero", "no_memory"}
    curve = res["valid_loss"]
    assert set(curve["free"]) == {"0", "1", "2"}
    assert curve["zero"]["0"] == pytest.approx(curve["no_memory"]["0"], abs=1e-6)  # output projection 0
    assert curve["free"]["0"] != pytest.approx(curve["zero"]["0"], abs=1e-6)  # the memory is read at once
    assert {(p["a"], p["b"], p["step"]) for p in res["valid_pairs"]} >= {
        ("free", "zero", 0),
        ("free", "zero", 2),
    }
    assert [p["unit"] for p in res["test_pairs"]][0].startswith("test NLL")
