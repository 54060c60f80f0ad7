"""Saved settings survive a round trip (issue 20, item 2) and live in one place (issue 16, item 1).

Every saved config carries a format version (0.3: the memory's settings nested under ``ltm``). Loading
reads every field the version defines: a missing or mistyped field is a ValueError naming it, an
unknown version is refused, and the 0.2 files convert. The 0.2 fixtures are literal copies of what
0.2 (main at 26c8528) wrote for the configs built in each test's comment.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import sys

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from infinite_former import LTMConfig
from infinite_former.attention import FORMAT_VERSION
from infinite_former.experiments.flags import MEMORY_FLAG_SPELLING, memory_flags, overrides, parse_set
from infinite_former.experiments.sort import SortSettings
from infinite_former.hf import (
    InfiniteGPT2Config,
    InfiniteGPT2LMHeadModel,
    MemoryConfig,
    add_memory,
    from_pretrained,
    load_memory,
    save_memory,
)
from infinite_former.models import ModelConfig
from infinite_former.models.config import LEGACY_02 as MODEL_LEGACY_02

# ModelConfig(vocab_size=11, d_model=16, n_heads=2, d_inner=32, mem_len=4, memory_type="infinite",
#             ltm_num_basis=8, ltm_num_samples=4, ltm_num_bins=8, ltm_tau=0.75).to_dict()
MODEL_02 = {
    "vocab_size": 11, "d_model": 16, "n_layers": 2, "n_heads": 2, "d_inner": 32, "dropout": 0.1, "mem_len": 4,
    "memory_type": "infinite", "cmem_len": 64, "compression_rate": 2, "recon_weight": 1.0, "ltm_num_basis": 8,
    "ltm_num_samples": 4, "ltm_tau": 0.75, "ltm_widths": [0.01, 0.05], "ltm_ridge_lambda": 1.0, "ltm_num_bins": 8,
    "ltm_normalizer": "softmax", "ltm_gate": True, "kl_weight": 1e-06, "kl_sigma0": 0.05, "ltm_min_sigma2": 0.0001,
    "tie_weights": True, "max_segment_len": None,
}  # fmt: skip
# SortSettings(num_basis=16, tau=0.6, steps=3, models=("infinite",), lengths=(64,)).to_dict()
SORT_02 = {
    "models": ["infinite"], "lengths": [64], "train_on": "mixed", "num_symbols": 4, "segment_len": 32, "mem_len": 32,
    "num_basis": 16, "num_samples": None, "tau": 0.6, "widths": [0.01, 0.05], "ridge_lambda": 1.0, "num_bins": 128,
    "kl_weight": 1e-06, "xl_mem_len": None, "cmem_len": None, "compression_rate": 2, "d_model": 64, "n_layers": 2,
    "n_heads": 4, "d_inner": 128, "dropout": 0.0, "steps": 3, "batch_size": 16, "lr": 0.003, "warmup_steps": None,
    "min_lr_ratio": 0.0, "clip": 1.0, "eval_sequences": 256, "valid_sequences": 0, "eval_every": 0, "ckpt_every": 0,
    "seed": 0, "device": "auto", "bf16": "auto", "threads": 0, "jobs": 0, "out": "runs", "name": "sort",
    "progress": True,
}  # fmt: skip
# add_memory(<the Llama below>, block_size=8, num_basis=8, num_samples=4, num_bins=8, tau=0.75, sticky=False,
#            memory_layers=[1]): save_memory's memory_config.json ...
ADAPTER_02 = {
    "base_model_name_or_path": None, "base_model_class": "LlamaForCausalLM", "base_model_type": "llama",
    "memory_config": {
        "block_size": 8, "num_basis": 8, "num_samples": 4, "tau": 0.75, "widths": [0.005, 0.01], "ridge_lambda": 0.5,
        "num_bins": 8, "sticky": False, "gate": True, "normalizer": "softmax", "min_sigma2": 0.0001,
        "kl_sigma0": 0.05, "kl_weight": 1e-06, "memory_layers": [1],
    },
}  # fmt: skip
# ... and config.json's infinite_memory after save_pretrained
INFINITE_MEMORY_02 = {
    "block_size": 8, "gate": True, "kl_sigma0": 0.05, "kl_weight": 1e-06, "memory_layers": [1], "min_sigma2": 0.0001,
    "normalizer": "softmax", "num_basis": 8, "num_bins": 8, "num_samples": 4, "ridge_lambda": 0.5, "sticky": False,
    "tau": 0.75, "widths": [0.005, 0.01],
}  # fmt: skip
# InfiniteGPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, block_size=8, num_basis=8,
#                    num_samples=8, tau=0.75, num_bins=8): config.json after save_pretrained
GPT2_02 = {
    "activation_function": "gelu_new", "add_cross_attention": False, "architectures": ["InfiniteGPT2LMHeadModel"],
    "attn_pdrop": 0.1, "block_size": 8, "bos_token_id": 50256, "dtype": "float32", "embd_pdrop": 0.1,
    "eos_token_id": 50256, "gate": True, "initializer_range": 0.02, "kl_sigma0": 0.05, "kl_weight": 1e-06,
    "layer_norm_epsilon": 1e-05, "memory_layers": None, "min_sigma2": 0.0001, "model_type": "infinite-gpt2",
    "n_embd": 16, "n_head": 2, "n_inner": None, "n_layer": 2, "n_positions": 32, "normalizer": "softmax",
    "num_basis": 8, "num_bins": 8, "num_samples": 8, "pad_token_id": None, "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.1, "ridge_lambda": 0.5, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
    "sticky": True, "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True, "tau": 0.75, "tie_word_embeddings": True,
    "transformers_version": "5.25.0", "use_cache": True, "vocab_size": 50, "widths": [0.005, 0.01],
}  # fmt: skip


def llama(heads: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def memory_llama(**memory) -> LlamaForCausalLM:
    """The Llama with the 0.2 fixtures' memory, its LTM weights random (its output is not the base's)."""
    model = add_memory(llama(), **{**INFINITE_MEMORY_02, **memory})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.memory_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


IDS = torch.randint(2, 50, (1, 19), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ LTMConfig


def test_ltm_config_reads_every_setting_and_names_a_missing_or_mistyped_one():
    saved = LTMConfig(num_basis=8, widths=(0.1, 0.2)).to_dict()
    assert "d_model" not in saved and LTMConfig.from_dict(saved) == LTMConfig(num_basis=8, widths=(0.1, 0.2))
    for name in saved:
        with pytest.raises(ValueError, match=name):
            LTMConfig.from_dict({k: v for k, v in saved.items() if k != name})
    for name, bad in [
        ("tau", "0.5"),
        ("num_basis", 8.0),
        ("sticky", "false"),
        ("widths", "0.1"),
        ("gate", 1),
    ]:
        with pytest.raises(ValueError, match=name):
            LTMConfig.from_dict({**saved, name: bad})
    with pytest.raises(ValueError, match="schedule"):
        LTMConfig.from_dict({**saved, "schedule": "x"})
    with pytest.raises(ValueError, match="d_model and n_heads"):
        from infinite_former import LongTermAttention

        LongTermAttention(LTMConfig())  # host-independent: needs bind(d_model, n_heads)


def test_a_setting_added_later_takes_its_default_in_older_files(monkeypatch):
    """A setting declared with since="0.4" is required in 0.4 files and defaulted in 0.3 ones."""
    import infinite_former.attention as attention

    monkeypatch.setitem(attention.SINCE, "gate", "0.4")
    saved = {k: v for k, v in LTMConfig(gate=False).settings().items() if k != "gate"}
    assert LTMConfig.from_dict(saved, version="0.3").gate is True  # the default: the behaviour before it
    with pytest.raises(ValueError, match="gate"):
        LTMConfig.from_dict(saved, version="0.4")


# ------------------------------------------------------------------------------ ModelConfig


def test_model_config_0_2_converts_and_0_3_round_trips():
    cfg = ModelConfig.from_dict(copy.deepcopy(MODEL_02))
    assert cfg.ltm == LTMConfig(
        num_basis=8, num_samples=4, tau=0.75, widths=(0.01, 0.05), ridge_lambda=1.0, num_bins=8, sticky=False
    )  # sticky: memory_type "infinite"
    assert (cfg.vocab_size, cfg.d_model, cfg.mem_len, cfg.memory_type) == (11, 16, 4, "infinite")
    saved = cfg.to_dict()
    assert saved["format_version"] == FORMAT_VERSION and saved["ltm"]["num_samples"] == 4
    assert not any(k.startswith("ltm_") or k in ("kl_weight", "kl_sigma0") for k in saved)  # one place only
    assert ModelConfig.from_dict(json.loads(json.dumps(saved))) == cfg


@pytest.mark.parametrize("drop", ["mem_len", "ltm_tau", "kl_weight"])
def test_model_config_0_2_missing_field_is_named(drop):
    with pytest.raises(ValueError, match=drop):
        ModelConfig.from_dict({k: v for k, v in MODEL_02.items() if k != drop})


def test_model_config_0_3_missing_mistyped_or_unknown_version_is_refused():
    saved = ModelConfig.from_dict(MODEL_02).to_dict()
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig.from_dict({k: v for k, v in saved.items() if k != "dropout"})
    with pytest.raises(ValueError, match="tau"):
        ModelConfig.from_dict({**saved, "ltm": {k: v for k, v in saved["ltm"].items() if k != "tau"}})
    with pytest.raises(ValueError, match="tau"):
        ModelConfig.from_dict({**saved, "ltm": {**saved["ltm"], "tau": "0.5"}})
    with pytest.raises(ValueError, match="mem_len"):
        ModelConfig.from_dict({**saved, "mem_len": "4"})
    with pytest.raises(ValueError, match="format_version '0.9'"):
        ModelConfig.from_dict({**saved, "format_version": "0.9"})
    with pytest.raises(ValueError, match="sticky"):  # the file contradicts itself
        ModelConfig.from_dict({**saved, "ltm": {**saved["ltm"], "sticky": True}})


def test_0_2_keywords_and_attributes_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="ltm_num_basis"):
        cfg = ModelConfig(vocab_size=11, ltm_num_basis=16, kl_weight=0.5)
    assert (cfg.ltm.num_basis, cfg.ltm.kl_weight, cfg.ltm.num_samples) == (16, 0.5, 128)  # 0.2's M = 128
    with pytest.warns(DeprecationWarning, match="ltm.tau"):
        assert cfg.ltm_tau == 0.5
    with pytest.warns(DeprecationWarning):
        assert SortSettings(num_basis=16).ltm.num_basis == 16
    for old in ("infinite_former.hf.config", "infinite_former.hf.configuration"):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match="deprecated since 0.3"):
            importlib.import_module(old)


# ------------------------------------------------------------------------------ SortSettings


def test_sort_settings_0_2_converts_and_0_3_round_trips():
    s = SortSettings.from_dict(copy.deepcopy(SORT_02))
    assert (s.ltm.num_basis, s.ltm.samples, s.ltm.tau, s.steps, s.models) == (16, 16, 0.6, 3, ("infinite",))
    assert SortSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="ridge_lambda"):
        SortSettings.from_dict({k: v for k, v in SORT_02.items() if k != "ridge_lambda"})


# ------------------------------------------------------------------------------ Hugging Face


def test_memory_config_0_2_forms_convert_and_missing_fields_are_named():
    for flat in (ADAPTER_02["memory_config"], INFINITE_MEMORY_02):
        cfg = MemoryConfig.from_dict(copy.deepcopy(flat))
        assert (cfg.block_size, cfg.memory_layers) == (8, (1,))
        assert (cfg.ltm.num_basis, cfg.ltm.samples, cfg.ltm.tau, cfg.ltm.sticky) == (8, 4, 0.75, False)
        assert cfg.ltm.zero_init_output and not cfg.ltm.check_finite  # what 0.2 always used
        assert MemoryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for drop in ("tau", "sticky", "kl_weight", "block_size"):  # 0.2 loaded the defaults for these
        with pytest.raises(ValueError, match=drop):
            MemoryConfig.from_dict({k: v for k, v in INFINITE_MEMORY_02.items() if k != drop})
    saved = MemoryConfig.from_dict(INFINITE_MEMORY_02).to_dict()
    with pytest.raises(ValueError, match="memory_layers"):
        MemoryConfig.from_dict({k: v for k, v in saved.items() if k != "memory_layers"})
    with pytest.raises(ValueError, match="format_version '1.0'"):
        MemoryConfig.from_dict({**saved, "format_version": "1.0"})


def test_a_0_2_adapter_and_full_folder_load_as_saved(tmp_path):
    model = memory_llama()
    ref = model(IDS).logits
    save_memory(model, tmp_path / "adapter")
    (tmp_path / "adapter" / "memory_config.json").write_text(json.dumps(ADAPTER_02))  # as 0.2 wrote it
    again = load_memory(llama(), tmp_path / "adapter")
    assert again.memory_config == model.memory_config
    torch.testing.assert_close(again(IDS).logits, ref, atol=0, rtol=0)
    adapter = tmp_path / "adapter" / "memory_config.json"
    for bad, name in [
        ({k: v for k, v in ADAPTER_02.items() if k != "base_model_class"}, "base_model_class"),
        ({**ADAPTER_02, "memory_config": {**ADAPTER_02["memory_config"], "tau": "0.5"}}, "tau"),
    ]:
        adapter.write_text(json.dumps(bad))
        base = llama()
        with pytest.raises(ValueError, match=name):
            load_memory(base, tmp_path / "adapter")
        assert not hasattr(base, "ltm")  # refused before the model changed

    model.save_pretrained(tmp_path / "full")
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert (
        config["infinite_memory"]["format_version"] == FORMAT_VERSION
        and "num_basis" in config["infinite_memory"]["ltm"]
    )
    (tmp_path / "full" / "config.json").write_text(
        json.dumps({**config, "infinite_memory": INFINITE_MEMORY_02})
    )
    full = from_pretrained(tmp_path / "full").eval()
    assert full.memory_config == model.memory_config
    torch.testing.assert_close(full(IDS).logits, ref, atol=0, rtol=0)
    broken = {**config, "infinite_memory": {k: v for k, v in INFINITE_MEMORY_02.items() if k != "tau"}}
    (tmp_path / "full" / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="tau"):
        from_pretrained(tmp_path / "full")


def test_load_memory_onto_a_model_with_memory_never_mixes_settings(tmp_path):
    save_memory(memory_llama(), tmp_path / "adapter")
    other = memory_llama(tau=0.5, num_basis=16)
    with pytest.raises(ValueError, match=r"differ.*ltm\.num_basis.*ltm\.tau"):
        load_memory(other, tmp_path / "adapter")
    assert other.memory_config.ltm.tau == 0.5  # unchanged
    same = memory_llama()
    with torch.no_grad():
        for p in same.memory_parameters():
            p.zero_()
    loaded = load_memory(same, tmp_path / "adapter")  # the same settings: the adapter's weights
    torch.testing.assert_close(loaded(IDS).logits, memory_llama()(IDS).logits, atol=0, rtol=0)


def test_an_adapter_trained_with_other_heads_is_refused(tmp_path):
    save_memory(memory_llama(), tmp_path / "adapter")  # 4 heads of width 4
    eight = llama(heads=8)  # the same weight shapes (hidden 16), 8 heads of width 2
    with pytest.raises(ValueError, match=r"num_heads: 4 != 8"):  # the base model's fingerprint
        load_memory(eight, tmp_path / "adapter")
    assert not hasattr(eight, "ltm")
    info = json.loads((tmp_path / "adapter" / "memory_config.json").read_text())
    del info["base_model"]  # an adapter saved before the fingerprint: memory_host still refuses it
    (tmp_path / "adapter" / "memory_config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"'n_heads': 4.*'n_heads': 8"):
        load_memory(eight, tmp_path / "adapter")
    assert not hasattr(eight, "ltm")


def test_infinite_gpt2_config_0_2_converts_and_0_3_saves_nested(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(GPT2_02))
    config = AutoConfig.from_pretrained(tmp_path / "old")
    assert isinstance(config, InfiniteGPT2Config) and config.block_size == 8
    assert (config.ltm["num_basis"], config.ltm["num_samples"], config.ltm["tau"], config.ltm["sticky"]) == (
        8, 8, 0.75, True
    )  # fmt: skip
    model = InfiniteGPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["memory_format_version"] == FORMAT_VERSION and saved["ltm"] == config.ltm
    assert "num_basis" not in saved and "tau" not in saved  # one form, nested
    again = InfiniteGPT2Config.from_pretrained(tmp_path / "new")
    assert again.ltm == config.ltm and again.block_size == 8
    changed = InfiniteGPT2Config.from_pretrained(tmp_path / "new", ltm={"tau": 0.6}, num_samples=4)
    assert changed.ltm == {**config.ltm, "tau": 0.6, "num_samples": 4}  # merged, not replaced
    for drop in ("tau", "block_size"):
        (tmp_path / "old" / "config.json").write_text(
            json.dumps({k: v for k, v in GPT2_02.items() if k != drop})
        )
        with pytest.raises(ValueError, match=drop):
            AutoConfig.from_pretrained(tmp_path / "old")
    bad = {**saved, "ltm": {k: v for k, v in saved["ltm"].items() if k != "num_bins"}}
    (tmp_path / "new" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="num_bins"):
        AutoConfig.from_pretrained(tmp_path / "new")
    (tmp_path / "new" / "config.json").write_text(json.dumps({**saved, "memory_format_version": "7"}))
    with pytest.raises(ValueError, match="'7'"):
        AutoConfig.from_pretrained(tmp_path / "new")


# ------------------------------------------------------------------------------ flags


def test_every_memory_setting_has_one_generated_flag_in_every_command():
    from infinite_former.cli import build_parser

    parser = build_parser()
    settings = [
        f.name
        for f in dataclasses.fields(LTMConfig)
        if f.metadata.get("cli", True) and not f.metadata.get("host")
    ]
    flags = {f.field.removeprefix("ltm."): f.flag for f in memory_flags()}
    assert sorted(flags) == sorted(settings)
    assert all(flags[k] == MEMORY_FLAG_SPELLING[k][0] for k in MEMORY_FLAG_SPELLING)
    commands = {
        ("sort",): ["sticky"],
        ("lm", "train"): ["sticky"],
        ("lm", "finetune"): [],
        ("dialogue", "train"): [],
    }  # the memory type decides sticky in sort and lm train
    for path, excluded in commands.items():
        p = parser
        for name in path:
            p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for setting, flag in flags.items():
            assert (flag in p._option_string_actions) == (setting not in excluded), (path, flag)


def test_memory_flags_reach_the_settings():
    from infinite_former.cli import build_parser
    from infinite_former.experiments.sort import sort_settings_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["sort", "--num-bins", "8", "--widths", "0.1,0.2", "--gate", "off", "--kl-weight", "0"]
    )
    s = sort_settings_from_args(args)
    assert (s.ltm.num_bins, s.ltm.widths, s.ltm.gate, s.ltm.kl_weight) == (8, (0.1, 0.2), False, 0.0)
    assert s.ltm.num_basis == 32 and s.model_config("infinite").ltm_config().num_bins == 8  # preset kept
    args = parser.parse_args(["lm", "finetune", "--data", "x", "--sampling", "uniform", "--tau", "0.6"])
    assert overrides(args, memory_flags()) == {"ltm": {"sticky": False, "tau": 0.6}}
    with pytest.raises(SystemExit):
        parser.parse_args(["sort", "--gate", "maybe"])
    aliases = {old: f"ltm.{new}" for old, new in MODEL_LEGACY_02.items()}
    assert parse_set(["ltm_num_bins=8", "ltm.tau=0.6", "mem_len=3"], ModelConfig, aliases) == {
        "ltm": {"num_bins": 8, "tau": 0.6},
        "mem_len": 3,
    }
