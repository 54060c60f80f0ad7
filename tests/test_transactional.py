"""Attaching and loading a memory is all or nothing (issue 20, build 1).

Every failure below must leave the model exactly as it was: same class, same state_dict
(names, values), no ``ltm`` attribute added and no memory settings written to its config.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from infinite_former.hf import (
    MemoryCausalLM,
    add_memory,
    from_pretrained,
    load_memory,
    load_model,
    save_memory,
)

MEMORY = dict(block_size=8, num_basis=16, num_samples=16, num_bins=8)


def llama(hidden: int = 32, heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def with_memory(seed: int = 1, **overrides):
    model = add_memory(llama(), **{**MEMORY, **overrides})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.memory_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def snapshot(model):
    return (
        type(model),
        {k: v.clone() for k, v in model.state_dict().items()},
        getattr(model.config, "infinite_memory", None),
        getattr(model, "memory_config", None),
    )


def assert_unchanged(model, before):
    cls, sd, settings, memory_config = before
    assert type(model) is cls
    now = model.state_dict()
    assert list(now) == list(sd)
    for k, v in sd.items():
        assert torch.equal(now[k], v), k
    assert getattr(model.config, "infinite_memory", None) == settings
    assert getattr(model, "memory_config", None) == memory_config


def logits(model, n: int = 20):
    torch.manual_seed(0)  # sticky sampling draws random numbers
    with torch.no_grad():
        return model(ids(n)).logits


def ids(n: int = 20):
    return torch.randint(2, 100, (1, n), generator=torch.Generator().manual_seed(0))


def test_failed_add_memory_leaves_the_model_usable():
    model = llama()
    before = snapshot(model)
    ref = model(ids()).logits
    for bad in (dict(block_size=10000), dict(memory_layers=[5]), dict(tau=2.0), dict(blocksize=3)):
        with pytest.raises(ValueError):
            add_memory(model, **bad)
        assert_unchanged(model, before)
        assert not hasattr(model, "ltm")
    torch.testing.assert_close(model(ids()).logits, ref, atol=0, rtol=0)  # still the plain model
    add_memory(model, **MEMORY)  # and a good attach afterwards works
    assert isinstance(model, MemoryCausalLM)
    model(ids())


@pytest.fixture
def adapter(tmp_path):
    save_memory(with_memory(), tmp_path / "adapter")
    return tmp_path / "adapter"


def corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "nan":  # overwrite the tensor data (after the header) with 0xFF: NaN floats
        header = 8 + int.from_bytes(data[:8], "little")
        data[header:] = b"\xff" * (len(data) - header)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "nan"])
@pytest.mark.parametrize("onto", ["base", "memory"])
def test_load_memory_of_a_bad_file_changes_nothing(adapter, how, onto):
    corrupt(adapter / "memory_adapter.safetensors", how)
    model = llama() if onto == "base" else with_memory(seed=7, tau=0.75)
    before = snapshot(model)
    with pytest.raises(ValueError, match="memory_adapter.safetensors|non-finite"):
        load_memory(model, adapter)
    assert_unchanged(model, before)


@pytest.mark.parametrize("other", [dict(hidden=64, heads=4), dict(hidden=32, heads=8)])
@pytest.mark.parametrize("old_format", [False, True])
def test_load_memory_onto_another_shape_is_refused_and_changes_nothing(adapter, other, old_format):
    if old_format:  # an adapter written before the base model's shape was recorded
        info = json.loads((adapter / "memory_config.json").read_text())
        del info["base_model"], info["memory_host"]
        (adapter / "memory_config.json").write_text(json.dumps(info))
    model = llama(**other)
    before = snapshot(model)
    if old_format and other["hidden"] == 32:
        # heads are not visible in the weights' shapes: an old adapter loads (nothing to check it against)
        load_memory(model, adapter)
        return
    with pytest.raises(ValueError, match="hidden_size|num_heads|shape"):
        load_memory(model, adapter)
    assert_unchanged(model, before)


def test_load_memory_onto_a_model_with_memory_takes_its_weights_or_refuses_and_changes_nothing(adapter):
    saved = load_memory(llama(), adapter)
    other = with_memory(seed=7, tau=0.75, sticky=False)  # other settings: refused, never a mix
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"differ.*ltm\.tau.*ltm\.sticky"):
        load_memory(other, adapter)
    assert_unchanged(other, before)
    model = with_memory(seed=7)  # the adapter's settings, other weights: takes the adapter's weights
    assert load_memory(model, adapter) is model
    assert model.memory_config == saved.memory_config
    assert model.config.infinite_memory == saved.memory_config.to_dict()
    torch.testing.assert_close(logits(model), logits(saved), atol=0, rtol=0)


def test_from_pretrained_checks_the_memory_weights_and_loads_without_a_report(tmp_path, caplog, capsys):
    model = with_memory()
    model.save_pretrained(tmp_path / "full")
    with caplog.at_level(logging.INFO):
        full = from_pretrained(tmp_path / "full")
    out = capsys.readouterr()
    assert "UNEXPECTED" not in caplog.text + out.out + out.err
    torch.testing.assert_close(logits(full), logits(model), atol=0, rtol=0)
    loaded = load_model(tmp_path / "full", block_size=16)
    assert loaded.memory_config.block_size == 16
    with pytest.raises(ValueError, match="block_size"):
        load_model(tmp_path / "full", block_size=1000)  # checked before the weights load
    corrupt(tmp_path / "full" / "model.safetensors", "nan")
    with pytest.raises(ValueError, match="non-finite"):
        from_pretrained(tmp_path / "full")
