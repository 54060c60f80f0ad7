"""Passkey-retrieval probe: prompt construction and scoring (experiments/passkey.py), and its CLI."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from infinite_former.experiments.passkey import (
    PasskeyConfig,
    build_prompt,
    filler_tokens,
    first_number,
    run_passkey,
)
from infinite_former.hf import GPT2WindowStream, InfiniteGPT2LMHeadModel, MemoryStream

VOCAB = 100


class CharTokenizer:
    """Printable ASCII, one token per character (ids 0..94)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i + 32) if 0 <= i < 95 else "?" for i in ids)


TOK = CharTokenizer()


@pytest.mark.parametrize("distance", [0, 7, 100, 333])
def test_passkey_is_at_the_stated_distance(distance):
    p = build_prompt(TOK.encode, "48213", distance, prefix=20)
    text = TOK.decode(p.ids)
    assert TOK.decode(p.ids[p.key_start : p.key_end]).count("48213") == 2
    assert p.question_start - p.key_end == distance
    assert "48213" not in TOK.decode(p.ids[p.key_end :])  # only in the passkey sentence
    assert text.endswith("What is the pass key? The pass key is")
    assert TOK.decode(p.ids[p.question_start :]) == " What is the pass key? The pass key is"
    assert len(p.ids) == p.question_start + len(TOK.encode(" What is the pass key? The pass key is"))
    gap = TOK.decode(p.ids[p.key_end : p.question_start])
    assert not any(ch.isdigit() for ch in gap)


def test_filler_has_exact_length_and_bad_inputs():
    assert len(filler_tokens(TOK.encode, 1234)) == 1234
    with pytest.raises(ValueError, match="digits"):
        build_prompt(TOK.encode, "12a", 10)
    with pytest.raises(ValueError, match="distances"):
        PasskeyConfig(distances=(-1,))
    with pytest.raises(ValueError, match="trials"):
        PasskeyConfig(trials=0)
    assert first_number("  4821 3.") == "4821" and first_number("none") is None
    assert PasskeyConfig.from_dict(PasskeyConfig(distances=(5,)).to_dict()).distances == (5,)


class OracleStream:
    """Reads like a model, answers with the number the text asked about (checks the scorer can say yes)."""

    def __init__(self, truthful: bool = True):
        self.truthful = truthful
        self.reset()

    def reset(self):
        self.text = ""

    def read(self, ids):
        self.text += TOK.decode(ids.tolist())

    def generate(self, prompt=None, max_new_tokens=8, **kwargs):
        key = self.text.split("The pass key is ")[1].split(".")[0] if self.truthful else "00000"
        return torch.tensor([TOK.encode(" " + key + ".")[:max_new_tokens]])


def test_scoring_with_an_oracle_and_a_liar():
    config = PasskeyConfig(distances=(10, 50), trials=4, prefix=5)
    right = run_passkey(OracleStream(True), TOK.encode, TOK.decode, config)
    wrong = run_passkey(OracleStream(False), TOK.encode, TOK.decode, config)
    assert [r["accuracy"] for r in right["per_distance"].values()] == [1.0, 1.0]
    assert [r["accuracy"] for r in wrong["per_distance"].values()] == [0.0, 0.0]
    passkeys = [a["passkey"] for a in right["per_distance"]["10"]["answers"]]
    assert all(len(k) == 5 for k in passkeys) and len(set(passkeys)) > 1  # random 5-digit keys


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB, bos_token_id=0, eos_token_id=None
    )
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_probe_runs_on_gpt2_with_memory_and_plain_gpt2(tiny_gpt2_dir):
    config = PasskeyConfig(distances=(8, 120), trials=2, prefix=4, digits=3)
    model = InfiniteGPT2LMHeadModel.from_pretrained(
        tiny_gpt2_dir, block_size=32, num_basis=16, num_samples=16, num_bins=8
    ).eval()
    streams = [
        MemoryStream(model),
        GPT2WindowStream(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()),
    ]
    for stream in streams:
        result = run_passkey(stream, TOK.encode, TOK.decode, config)
        assert set(result["per_distance"]) == {"8", "120"}
        for r in result["per_distance"].values():
            assert 0.0 <= r["accuracy"] <= 1.0 and r["trials"] == 2 and len(r["answers"]) == 2
            assert r["correct"] == sum(a["correct"] for a in r["answers"])
        # the whole prompt went through the stream (plus the generated answer)
        prompt = build_prompt(TOK.encode, "123", 120, prefix=4)
        assert stream.num_tokens == len(prompt.ids) + len(TOK.encode(" 999")) + 2
    # the memory model read the long prompt into its long-term memory (prompt > n_positions)
    assert int(streams[0].memory.ltm_tokens) >= 32 * 4


def test_cli_with_a_trained_byte_level_tokenizer(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    from infinite_former.cli import main

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["The grass is green. The sky is blue. What is the pass key? 0123456789"] * 20, vocab_size=300
    )
    bpe.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=300, bos_token_id=0, eos_token_id=None
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    InfiniteGPT2LMHeadModel.from_pretrained(
        tmp_path / "gpt2", block_size=32, num_basis=16, num_samples=16, num_bins=8
    ).save_pretrained(tmp_path / "mem")
    out = tmp_path / "passkey.json"
    argv = ["--model", str(tmp_path / "mem"), "--tokenizer", str(tmp_path / "tokenizer.json")]
    assert (
        main(
            ["passkey", *argv, "--distances", "10", "60", "--trials", "2", "--prefix", "8", "--out", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["per_distance"]) == {"10", "60"}
    assert result["stream"] == "MemoryStream" and "machine" in result
    window_out = tmp_path / "window.json"
    code = main(
        [
            "passkey",
            "--model",
            str(tmp_path / "gpt2"),
            "--tokenizer",
            str(tmp_path / "tokenizer.json"),
            "--window",
            "--distances",
            "10",
            "--trials",
            "1",
            "--prefix",
            "8",
            "--out",
            str(window_out),
        ]
    )
    assert code == 0 and json.loads(window_out.read_text())["stream"] == "GPT2WindowStream"
