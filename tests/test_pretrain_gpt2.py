"""benchmarks/pretrain_gpt2.py at toy size: a GPT-2 folder that lm finetune's loaders read back."""

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_pretrain_writes_a_gpt2_folder_that_loads(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain_gpt2", ROOT / "benchmarks" / "pretrain_gpt2.py")
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
