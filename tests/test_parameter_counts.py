"""The parameter counts the benchmarks record ({total, base, memory}) against counts written out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from infinite_former.models import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ltm_weights(e: int, n: int) -> int:
    """One LongTermAttention: W_Q, W_K, W_V (e×e), W_O (e×e + e), the gate Conv1d (e×e×3 + e), w_μ, w_σ (N + 1)."""
    return 4 * e * e + e + 3 * e * e + e + 2 * (n + 1)


@pytest.mark.parametrize("memory_type", ["xl", "compressive", "infinite", "infinite_sticky"])
def test_lm_counts_split_base_and_memory(memory_type):
    bench = load_benchmark("lm_shakespeare_memory_use")
    e, layers, v, d_inner, n, c = 16, 2, 30, 24, 8, 3
    cfg = ModelConfig(
        vocab_size=v,
        d_model=e,
        n_layers=layers,
        n_heads=2,
        d_inner=d_inner,
        memory_type=memory_type,
        mem_len=6,
        compression_rate=c,
        ltm={"num_basis": n},
    )
    # tied embedding; per layer: 2 LayerNorms, qkv, W_R, W_O, u, v, the FFN; the final LayerNorm
    attention = 3 * e * e + e * e + e * e + 2 * e  # qkv, W_R, W_O, u and v (H × d each)
    ffn = (e * d_inner + d_inner) + (d_inner * e + e)
    base = v * e + layers * (2 * 2 * e + attention + ffn) + 2 * e
    memory = {"xl": 0, "compressive": layers * (e * e * c + e), "infinite": layers * ltm_weights(e, n)}
    expected = memory[memory_type.removesuffix("_sticky")]
    assert bench.num_parameters(cfg) == {"total": base + expected, "base": base, "memory": expected}


@pytest.mark.parametrize("variant", ["base", "no_memory_window", "infinite", "infinite_sticky_wiped"])
def test_gpt2_finetune_counts_split_base_and_memory(variant, monkeypatch):
    bench = load_benchmark("gpt2_finetune")
    monkeypatch.setattr(bench, "S", {**bench.S, "block_size": 16, "num_basis": 8, "num_samples": 8})
    e, layers, v, pos = 16, 2, 50, 32
    config = {"vocab_size": v, "n_positions": pos, "n_embd": e, "n_layer": layers, "n_head": 2}
    # GPT-2: tied wte, wpe; per layer ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj; ln_f
    gpt2 = v * e + pos * e + layers * (12 * e * e + 13 * e) + 2 * e
    memory = layers * ltm_weights(e, 8) if variant.startswith("infinite") else 0
    assert bench.num_parameters(config, variant) == {"total": gpt2 + memory, "base": gpt2, "memory": memory}
    with pytest.raises(ValueError, match="variant"):
        bench.num_parameters(config, "bigger")


def test_sorting_budget_counts_split_base_and_memory():
    from infinite_former.experiments.sort import SortSettings

    bench = load_benchmark("sorting_budget")
    s = SortSettings(
        num_symbols=4, d_model=16, n_layers=2, n_heads=2, d_inner=24, ltm={"num_basis": 8}, mem_len=8
    )
    xl, inf = bench.num_parameters(s, "xl"), bench.num_parameters(s, "infinite")
    assert xl["memory"] == 0 and xl["total"] == xl["base"] == inf["base"]
    assert inf["memory"] == 2 * ltm_weights(16, 8) and inf["total"] == inf["base"] + inf["memory"]
