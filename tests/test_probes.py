"""Offline long-context probes (data/probes.py) and ``infinite-former probe`` (experiments/probe.py)
on a tiny random Llama with and without memory and a byte-level BPE trained here."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from infinite_former.cli import main
from infinite_former.data.probes import (
    FILLER,
    NIAH_HEAD,
    PASSKEY_HEAD,
    VT_HEAD,
    WORDS,
    copy_sample,
    niah_sample,
    passkey_sample,
    vt_sample,
)
from infinite_former.experiments.probe import ProbeConfig, run_probe
from infinite_former.hf import add_memory

VOCAB, POSITIONS = 400, 64


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    bpe = ByteLevelBPETokenizer()
    corpus = [FILLER, " ".join(WORDS), "VAR ABCDE = 12345. special magic numbers pass key 0123456789"]
    bpe.train_from_iterator(corpus * 20, vocab_size=VOCAB)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    bpe.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path)), path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A plain tiny Llama folder (64 positions) and the same model saved with memory."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=POSITIONS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("models")
    plain = AutoModelForCausalLM.from_config(config)
    plain.save_pretrained(root / "plain")
    add_memory(plain, block_size=32, num_basis=16, num_samples=16, num_bins=8).save_pretrained(
        root / "memory"
    )
    return root / "plain", root / "memory"


def encode_of(tokenizer):
    return lambda text: tokenizer.encode(text)


# ------------------------------------------------------------------ generators


@pytest.mark.parametrize("make", [passkey_sample, niah_sample, vt_sample])
def test_text_probes_have_the_exact_length_put_the_needle_at_its_depth_and_repeat_from_a_seed(
    tokenizer, make
):
    encode = encode_of(tokenizer[0])
    samples = [make(encode, random.Random(3), 500, d) for d in (0.0, 0.5, 1.0)]
    assert all(len(s.ids) == 500 for s in samples)
    starts = [s.needle_position for s in samples]
    assert starts[0] < starts[1] < starts[2]
    head = {passkey_sample: PASSKEY_HEAD, niah_sample: NIAH_HEAD.format(kind="numbers"), vt_sample: VT_HEAD}
    assert starts[0] == len(encode(head[make]))  # depth 0: right after the head
    after = tokenizer[0].decode(samples[2].ids[starts[2] :])
    assert "grass" not in after and "grass" in tokenizer[0].decode(
        samples[2].ids[: starts[2]]
    )  # depth 1: last
    again = make(encode, random.Random(3), 500, 0.5)
    assert again == samples[1] and make(encode, random.Random(4), 500, 0.5).answers != samples[1].answers
    text = tokenizer[0].decode(samples[1].ids)
    assert all(a in text for a in samples[1].answers)  # what is asked for is in the prompt
    with pytest.raises(ValueError, match="too short"):
        make(encode, random.Random(0), 20, 0.5)
    with pytest.raises(ValueError, match="depth"):
        make(encode, random.Random(0), 500, 1.5)


def test_scores_exact_match_and_fraction_of_values(tokenizer):
    encode = encode_of(tokenizer[0])
    key = passkey_sample(encode, random.Random(0), 200, 0.5)
    assert key.score(f" {key.answers[0]}. Remember") == 1.0 and key.score(" 1 " + key.answers[0]) == 0.0
    multi = niah_sample(
        encode, random.Random(0), 400, 0.5, keys=3, values=2, key_kind="words", value_kind="words"
    )
    assert len(multi.answers) == 2 and all(a in WORDS for a in multi.answers)
    assert multi.score(f"{multi.answers[0]} and {multi.answers[1]}") == 1.0
    assert multi.score(f"{multi.answers[1]}, nothing else") == 0.5 and multi.score("none") == 0.0
    text = tokenizer[0].decode(multi.ids)
    assert (
        text.count("special magic words for") == 2 + 2 + 2
    )  # 2 values, 2 distractor keys, the question (twice)
    numbers = niah_sample(encode, random.Random(0), 400, 0.5, key_kind="numbers", value_kind="numbers")
    assert numbers.answers[0].isdigit() and len(numbers.answers[0]) == 7


def test_variable_tracking_states_each_chain_in_order(tokenizer):
    encode = encode_of(tokenizer[0])
    vt = vt_sample(encode, random.Random(1), 500, 0.2, hops=3, chains=2)
    text = tokenizer[0].decode(vt.ids)
    names = vt.answers
    assert len(names) == 4
    positions = [text.index(f"VAR {n} =") for n in names]
    assert positions == sorted(positions)  # assignments before their uses
    for a, b in zip(names[:-1], names[1:], strict=True):
        assert f"VAR {b} = VAR {a}." in text
    assert text.count("VAR ") == 2 * (1 + 2 * 3)  # both chains: "VAR A = v" and 3 × "VAR B = VAR A"
    assert vt.score(" ".join(names)) == 1.0


def test_copy_repeats_the_span_after_the_gap():
    s = copy_sample(random.Random(0), 10, 50, span=8, gap=5)
    assert len(s.ids) == 21 and s.ids[:8] == s.ids[13:]
    assert [s.ids[i] for i in s.first] == [s.ids[i] for i in s.second] and len(s.first) == 7
    assert all(10 <= t < 50 for t in s.ids)
    with pytest.raises(ValueError, match="span"):
        copy_sample(random.Random(0), 10, 50, span=1, gap=5)


# ------------------------------------------------------------------ the command


@pytest.mark.parametrize("task", ["passkey", "niah", "vt", "copy"])
def test_every_probe_runs_on_a_tiny_model_with_memory_beyond_its_positions(
    tmp_path, tokenizer, folders, task
):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["probe", task, "--model", str(folders[1]), "--tokenizer", str(tokenizer[1]), "--trials", "1"]
    argv += ["--lengths", "300,400", "--depths", "0,1", "--gaps", "0,80", "--span", "8", "--seed", "5"]
    argv += ["--keys", "2", "--hops", "2", "--out", str(out), "--png", str(png)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["memory"] is True and result["task"] == task and png.stat().st_size > 1000
    if task == "copy":
        assert set(result["per_gap"]) == {"0", "80"}
        for row in result["per_gap"].values():
            assert 0 < row["nll_first_copy"] < 20 and 0 <= row["accuracy_second_copy"] <= 1
    else:
        cells = {(c["length"], c["depth"]) for c in result["grid"]}
        assert cells == {(300, 0.0), (300, 1.0), (400, 0.0), (400, 1.0)}
        assert all(0 <= c["score"] <= 1 and c["trials"][0]["reply"] is not None for c in result["grid"])
        assert set(result["by_length"]) == {"300", "400"}
    key = "per_gap" if task == "copy" else "grid"
    assert (
        main(argv) == 0 and json.loads(out.read_text())[key] == result[key]
    )  # same seed, same prompts and answers


def test_plain_models_are_refused_beyond_their_positions_naming_the_limit(tokenizer, folders):
    plain = AutoModelForCausalLM.from_pretrained(folders[0]).eval()
    encode, decode = encode_of(tokenizer[0]), tokenizer[0].decode
    with pytest.raises(
        ValueError, match=r"passkey at length 200 needs 2\d\d tokens, beyond the 64 positions"
    ):
        run_probe(plain, ProbeConfig(task="passkey", lengths=(200,), trials=1), encode, decode)
    with pytest.raises(
        ValueError,
        match=r"copy with gap 60 needs 76 tokens, beyond the 64 positions .*max_position_embeddings",
    ):
        run_probe(plain, ProbeConfig(task="copy", gaps=(60,), span=8, trials=1))
    short = run_probe(plain, ProbeConfig(task="copy", gaps=(0, 40), span=8, trials=2))
    assert (
        short["memory"] is False
        and short["context_limit"] == POSITIONS
        and set(short["per_gap"]) == {"0", "40"}
    )
    assert (
        main(["probe", "vt", "--model", str(folders[0]), "--tokenizer", str(tokenizer[1]), "--no-memory"])
        == 2
    )
    free = [
        "probe",
        "copy",
        "--model",
        str(folders[0]),
        "--training-free",
        "gaussian:0.3",
        "--block-size",
        "16",
    ]
    out = folders[0].parent / "free.json"
    assert main([*free, "--gaps", "100", "--span", "8", "--trials", "1", "--out", str(out)]) == 0  # beyond 64
    written = json.loads(out.read_text())
    assert written["memory"] is True and written["training_free"] == "gaussian:0.3"
    plain.config.max_position_embeddings = 512  # rotary positions: the same model takes longer prompts
    result = run_probe(
        plain, ProbeConfig(task="passkey", lengths=(200,), depths=(0.5,), trials=1), encode, decode
    )
    assert result["grid"][0]["length"] == 200 and result["context_limit"] == 512
