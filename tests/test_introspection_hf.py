"""Memory introspection of Hugging Face models with memory (hf/introspection.py, `lm inspect --hf`).

Tiny random Llama and GPT-2 configs with add_memory, built here; no network.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from infinite_former.cli import main
from infinite_former.hf import add_memory
from infinite_former.hf.introspection import inspect_hf_document
from infinite_former.introspection import InspectConfig, write_report

VOCAB, BLOCK, BLOCKS = 100, 8, 6
# N = 16 RBFs of width 0.05: wide enough to hold a block of 8 on [τ, 1] (the default widths fit N = 512)
MEMORY = dict(block_size=BLOCK, num_basis=16, num_samples=8, num_bins=8, widths=(0.05,))
WORDS = "the king queen lord lady sword crown castle night day love death war peace".split()


def tiny_config(family: str):
    if family == "llama":
        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
        )  # fmt: skip
    return GPT2Config(
        vocab_size=VOCAB, n_layer=2, n_embd=16, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=1
    )


def tiny_model(family: str, **over):
    """The family's tiny model with memory, its LTM weights random (so that the memory is read)."""
    torch.manual_seed(0)
    model = add_memory(AutoModelForCausalLM.from_config(tiny_config(family)), **{**MEMORY, **over}).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.memory_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def document(n: int = BLOCK * BLOCKS, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def plain_reading(model, ids: torch.Tensor, seed: int):
    """The model's own block-by-block loop: (logits (n, V), NLL per token)."""
    torch.manual_seed(seed)  # sticky sampling draws from the global RNG
    mem, logits = None, []
    with torch.no_grad():
        for s in range(0, ids.numel(), BLOCK):
            out = model(ids[None, s : s + BLOCK], memory=mem)
            mem = out.memory
            logits.append(out.logits[0])
    logits = torch.cat(logits)
    return logits, float(F.cross_entropy(logits[:-1], ids[1:]))


# ---------------------------------------------------------------------------------- the reading


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_reading_is_the_models_own_computation(family):
    """Same logits as the plain block-by-block forward (sticky draws included), and the caller's RNG
    state is left as it was."""
    model = tiny_model(family)
    ids = document()
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
    rng = torch.get_rng_state()
    report = inspect_hf_document(model, ids, InspectConfig(grid_points=128, seed=5))
    hook.remove()
    assert torch.equal(torch.get_rng_state(), rng)
    logits, nll = plain_reading(model, ids, seed=5)
    assert torch.equal(torch.cat(seen), logits)
    assert report.meta["nll_per_token"] == pytest.approx(nll, rel=1e-6)
    _, other = plain_reading(model, ids, seed=6)
    assert other != pytest.approx(nll, rel=1e-9)  # the seed matters: the test would see other draws


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_report_covers_every_memory_layer_and_all_the_density(family):
    model = tiny_model(family)
    n = BLOCK * BLOCKS
    report = inspect_hf_document(model, document(), InspectConfig(grid_points=128))
    assert len(report.layers) == len(model.ltm) == 2 and report.seg_len == report.mem_len == BLOCK
    assert report.memory_type == "infinite_sticky" and report.num_samples == 8 and report.tokens == n
    for i, layer in enumerate(report.layers):
        heads = layer.attention_mass.shape[0]
        assert heads == 2 and layer.queries == n - BLOCK  # from block 2 on, every query reads the memory
        total = layer.attention_mass.sum() + layer.outside_mass.sum()
        assert total == pytest.approx(layer.queries * heads, rel=1e-6)  # each density has mass 1
        assert (layer.attention_mass >= 0).all() and layer.attention_mass.sum() > 0
        assert 1 <= report.median_attention_age(i) <= n
        assert layer.absorptions == BLOCKS - 1  # the last block is still in the short-term memory
        assert layer.tracked_positions == list(range(n - BLOCK))  # every absorbed token (n < max_tracked)
        assert ((layer.recon_age > 0) & (layer.recon_age <= n)).all()
        newest = layer.recon_error[-BLOCK:]
        oldest = layer.recon_error[:BLOCK]
        assert newest.mean() < 0.5 and newest.mean() < oldest.mean()  # older content is squeezed and blurred


def test_sticky_histograms_are_the_samples_the_update_used(sticky_draws):
    """The recorded sample positions are those update_memory drew (a spy on memory.sticky_positions)."""
    used = sticky_draws
    model = tiny_model("llama")
    report = inspect_hf_document(model, document(seed=1), InspectConfig(grid_points=128, seed=3))
    recorded = [h for step in zip(*(r.sticky_histograms for r in report.layers)) for h in step]
    assert len(recorded) == len(used) == 2 * (BLOCKS - 2)  # per layer, per absorption into a non-empty memory
    for a, b in zip(recorded, used):
        np.testing.assert_array_equal(a, b)
    assert all(h.sum() == 8 for h in recorded)  # M samples each


def test_uniform_sampling_and_a_subset_of_memory_layers(tmp_path):
    model = tiny_model("gpt2", sticky=False, memory_layers=[1])
    report = inspect_hf_document(model, document(BLOCK * 4 + 3), InspectConfig(grid_points=64))
    assert report.memory_type == "infinite" and report.layer_ids == [1] and len(report.layers) == 1
    assert not report.layers[0].sticky_histograms and report.layers[0].absorptions == 4
    files = write_report(report, tmp_path)
    assert "sticky" not in files
    data = json.loads((tmp_path / "inspect.json").read_text())
    assert [layer["layer"] for layer in data["layers"]] == [1]  # named by the model's layer index


def test_report_json_and_figures(tmp_path):
    model = tiny_model("llama")
    report = inspect_hf_document(model, document(), InspectConfig(grid_points=128, max_tracked=20))
    files = write_report(report, tmp_path)
    assert set(files) == {"json", "attention_age", "reconstruction", "sticky"}
    for name in files.values():
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "inspect.json").read_text())
    assert data["tokens"] == BLOCK * BLOCKS and len(data["layers"]) == 2 and data["model_type"] == "llama"
    assert data["tracked_every"] == 3 and data["block_size"] == BLOCK
    layer = data["layers"][0]
    assert sum(layer["reconstruction"]["tokens"]) == len(report.layers[0].tracked_positions) == 14
    assert len(layer["sticky_histograms"]) == BLOCKS - 2
    assert sum(layer["attention_share_by_age"]) + layer["attention_share_outside_0_1"] == pytest.approx(1)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="model: a LlamaForCausalLM has no memory"):
        inspect_hf_document(AutoModelForCausalLM.from_config(tiny_config("llama")), document())
    with pytest.raises(ValueError, match="token_ids: need at least 2"):
        inspect_hf_document(tiny_model("gpt2"), [5])
    with pytest.raises(ValueError, match="no memory layers"):
        inspect_hf_document(tiny_model("gpt2", memory_layers=[]), document())


# ------------------------------------------------------------------------------------------- CLI


def save_folder(folder, family: str = "llama", with_memory: bool = True):
    """A tiny model (with memory or without) and its own fast tokenizer (EOS '</s>'), saved as a folder."""
    from infinite_former.data.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(50)) for _ in range(10)]
    backend = train_bpe_tokenizer(texts, vocab_size=300).backend
    backend.add_special_tokens(["</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="</s>")
    config = tiny_config(family)
    config.vocab_size, config.eos_token_id, config.bos_token_id = len(tok), tok.eos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if with_memory:
        add_memory(model, **MEMORY)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_inspect_hf_cli_end_to_end(tmp_path, capsys, family):
    folder = save_folder(tmp_path / f"{family}-mem", family)
    text = tmp_path / "doc.txt"
    rng = random.Random(1)
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(60)))
    out = tmp_path / "inspect"
    argv = ["lm", "inspect", "--hf", str(folder), "--text", str(text), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--grid-points", "128"]) == 0
    printed = capsys.readouterr().out
    assert "layer 1: median attention age" in printed and "inspect.json" in printed
    raw = (out / "inspect.json").read_text()
    assert str(tmp_path) not in raw  # no absolute paths in the results
    data = json.loads(raw)
    assert data["model"] == f"{family}-mem" and data["text"] == "doc.txt" and data["model_type"] == family
    assert data["ltm"] == {"num_basis": 16, "num_samples": 8, "tau": 0.5, "num_bins": 8}  # the saved memory
    assert data["tokens"] > 4 * BLOCK and {"attention_age", "reconstruction", "sticky"} <= set(data["files"])
    for name in data["files"].values():
        assert (out / name).is_file()


def test_lm_inspect_hf_bad_input_names_the_argument(tmp_path, capsys):
    folder = save_folder(tmp_path / "llama-mem")
    plain = save_folder(tmp_path / "llama-plain", with_memory=False)
    text = tmp_path / "doc.txt"
    text.write_text("the king and the queen")
    cases = [
        ("--text", ["--hf", str(folder), "--text", str(tmp_path / "nope.txt")]),
        ("--hf: ", ["--hf", str(plain), "--text", str(text)]),  # a model folder without memory
        ("--hf: ", ["--hf", str(tmp_path / "none"), "--text", str(text)]),
        ("exactly one of --run", ["--text", str(text)]),
        ("exactly one of --run", ["--run", str(tmp_path), "--hf", str(folder), "--text", str(text)]),
        ("--seg-len", ["--hf", str(folder), "--text", str(text), "--seg-len", "4"]),
    ]
    errors = []
    for expected, argv in cases:
        assert main(["lm", "inspect", *argv, "--device", "cpu"]) == 2
        errors.append(capsys.readouterr().err)
        assert expected in errors[-1]
    assert "llama model without memory" in errors[1] and "not a model folder" in errors[2]
    assert not (tmp_path / "llama-plain" / "inspect").exists()
