"""benchmarks/dialogue_pretrained.py at toy size: pretrain a GPT-2 on tiny plays, fine-tune the four
variants on their scene dialogues, pair them, and render the docs table."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("rouge_score")

ROOT = Path(__file__).resolve().parent.parent

PROLOGUE = "CHORUS. " + " ".join(
    f"The {w} of the kingdom stands at the gate." for w in ("lords", "walls", "king")
)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _play(name: str) -> str:
    scenes = []
    for k in (1, 2):
        speeches = [f"{who}.\nWhat news of {name}, scene {k}, speech {i}?\n" for i, who in enumerate("ABAB")]
        scenes.append(f"SCENE {k}. A hall.\n\n" + "\n".join(speeches))
    return f"{name.upper()}\n\n{PROLOGUE}\n\n" + "\n".join(scenes)


def test_dialogue_pretrained_end_to_end_at_toy_size(tmp_path):
    data = tmp_path / "plays"
    for split in ("train", "valid", "test"):
        (data / split).mkdir(parents=True)
        (data / split / f"{split}.txt").write_text(_play(split))
    base = tmp_path / "gpt2"
    pretrain = ["--data", str(data), "--out", str(base), "--steps", "2", "--warmup", "1", "--n-layer", "1",
                "--n-embd", "16", "--n-head", "2", "--n-positions", "32", "--vocab-size", "300",
                "--eval-windows", "2"]  # fmt: skip
    assert _load("pretrain").main(pretrain) == 0

    bench = _load("dialogue_pretrained")
    common = ["--base", str(base), "--data", str(data), "--runs-dir", str(tmp_path / "runs")]
    common += ["--records", str(tmp_path / "records")]
    for item in (
        "steps=2",
        "eval_replies=1",
        "max_new_tokens=3",
        "num_basis=8",
        "num_samples=8",
        "block_size=16",
    ):
        common += ["--set", item]
    assert bench.main(["run", "--seeds", "0", *common]) == 0
    out = tmp_path / "out.json"
    assert bench.main(["summarize", "--expected-seeds", "0", "--out", str(out), "--cut", "toy", *common]) == 0

    d = json.loads(out.read_text())
    assert list(d["models"]) == list(bench.VARIANTS) and d["complete"] and d["paired_seeds"] == [0]
    memory = {name: m["memory_parameters"] for name, m in d["models"].items()}
    assert memory["no_memory"] == memory["training_free"] == memory["free_at_eval"] == 0  # no memory weights
    assert memory["infinite"] == memory["infinite_sticky"] > 0
    assert d["settings"]["steps"] == 2 and d["settings"]["cut"] == "toy"
    assert d["documents"]["block_size"] == 16 and d["documents"]["longer_than_one_block"] == 1.0
    assert d["documents"]["replies"] == 2  # one per test scene
    assert len(d["pairs"]) == len(bench.PAIRS) * len(bench.METRICS) and len(d["verdicts"]) == len(bench.PAIRS)
    for p in d["pairs"]:
        assert p["units"] == 2 and p["seeds"] == 1 and p["ci95"][0] <= p["mean_diff"] <= p["ci95"][1]
    assert d["machine"]["torch_threads"] == 1
    free = d["models"]["free_at_eval"]  # evaluation only, on no_memory's weights
    assert free["train_seconds"] == 0 and free["parameters"] == d["models"]["no_memory"]["parameters"]

    report = _load("report")
    table = report.dialogue_pretrained(out)
    assert all(label in table for label in report.PRETRAINED_DIALOGUE_LABELS.values())
    assert table.count("| ∞-former (sticky) − no memory |") == len(bench.METRICS)
