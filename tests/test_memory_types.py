"""The memory-type protocol (models/memory_type.py) and its registry (models/registry.py): every type
spends the same budget, carries its label, keeps its checkpoint keys, and a new type plugs into the
LM with one file and one registry entry (the worked example of docs/memory_types.md, run here)."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from infinite_former.experiments.sort import SortSettings
from infinite_former.models import (
    MEMORY_TYPES,
    InfiniteFormerLM,
    LMState,
    ModelConfig,
    memory_labels,
    memory_type_class,
)

V = 11


def tiny(memory_type: str, **kw) -> ModelConfig:
    base = dict(
        vocab_size=V, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0, mem_len=4,
        memory_type=memory_type, cmem_len=4, compression_rate=2,
        ltm={"num_basis": 8, "num_samples": 8, "num_bins": 8},
    )  # fmt: skip
    base.update(kw)
    return ModelConfig(**base)


# ------------------------------------------------------------------------- budget, labels, sizes


@pytest.mark.parametrize("name", list(MEMORY_TYPES))
def test_every_memory_type_spends_the_equal_budget(name):
    """equal_budget(m, N) gives each type a memory of m + N vectors per layer (its state_size)."""
    kind = memory_type_class(name)
    for mem_len, n in [(4, 8), (6, 16)]:
        cfg = tiny(
            name, ltm={"num_basis": n, "num_samples": n, "num_bins": 8}, **kind.equal_budget(mem_len, n)
        )
        assert kind(cfg).state_size() == mem_len + n


def test_sort_settings_give_every_type_the_same_budget():
    s = SortSettings(models=tuple(MEMORY_TYPES), mem_len=8, ltm={"num_basis": 16}, steps=1, eval_sequences=1)
    sizes = {name: memory_type_class(name)(s.model_config(name)).state_size() for name in MEMORY_TYPES}
    assert sizes == dict.fromkeys(MEMORY_TYPES, 8 + 16)
    budget = s.memory_budget()
    assert set(budget) == {"rule", *MEMORY_TYPES}
    assert budget["xl"] == {"mem_len": 24} and budget["compressive"]["cmem_len"] == 16
    assert budget["infinite"] == {"mem_len": 8, "num_basis": 16, "num_samples": 16}
    # explicit sizes win over the rule
    s = SortSettings(mem_len=8, ltm={"num_basis": 16}, xl_mem_len=10, cmem_len=5, steps=1, eval_sequences=1)
    assert s.model_config("xl").mem_len == 10 and s.model_config("compressive").cmem_len == 5


def test_labels_come_from_the_memory_types():
    labels = memory_labels()
    assert list(labels) == list(MEMORY_TYPES)
    assert labels["xl"] == "Transformer-XL" and labels["infinite_sticky"] == "∞-former (sticky)"
    assert len(set(labels.values())) == len(labels)  # a legend can tell them apart


def test_unknown_memory_type_names_the_known_ones():
    with pytest.raises(ValueError, match="memory_type must be one of .*'xl'.*got 'lstm'"):
        memory_type_class("lstm")
    with pytest.raises(ValueError, match="memory_type"):
        tiny("lstm")


@pytest.mark.parametrize("name", list(MEMORY_TYPES))
def test_parameter_count_and_checkpoint_keys(name):
    """The memory's parameters sit under layers.<i>.<module_name> (0.2's checkpoint keys: ltm,
    compressor) and num_parameters counts exactly them."""
    kind = memory_type_class(name)
    legacy = {"xl": None, "compressive": "compressor", "infinite": "ltm", "infinite_sticky": "ltm"}
    if name in legacy:
        assert kind.module_name == legacy[name]
    torch.manual_seed(0)
    model = InfiniteFormerLM(tiny(name))
    params = dict(model.named_parameters())
    own = [k for k in params if k.split(".")[2:3] == [kind.module_name]]  # layers.<i>.<module_name>.*
    not_plain = [
        k for k in params if k.startswith("layers.") and k.split(".")[2] not in ("ln1", "attn", "ln2", "ff")
    ]
    assert not_plain == own  # the memory adds parameters only under its module
    if name == "compressive":
        assert [k for k in own if k.startswith("layers.0.")] == [
            "layers.0.compressor.conv.weight",
            "layers.0.compressor.conv.bias",
        ]
        e, c = 16, 2
        assert model.memory.num_parameters(model.layers) == 2 * (e * e * c + e)  # Conv1d(e, e, c), 2 layers
    assert model.memory.num_parameters(model.layers) == sum(params[k].numel() for k in own)


@pytest.mark.parametrize(
    "name, keys",
    [
        ("xl", []),
        ("compressive", ["cmems.0", "cmems.1", "cmem_valid"]),
        ("infinite_sticky", ["ltm.0.coeffs", "ltm.0.length", "ltm.0.bin_mass", "ltm.1.coeffs", "ltm.1.length",
                             "ltm.1.bin_mass", "ltm_pending.0", "ltm_pending.1", "ltm_pending_count"]),
    ],
)  # fmt: skip
def test_state_dict_keys_are_those_of_0_2(name, keys):
    """Saved memories keep 0.2's flat keys (plus 0.3's fingerprint of the model that made them), and
    load back into the right memory type's state."""
    torch.manual_seed(0)
    model = InfiniteFormerLM(tiny(name)).eval()
    _, state = model(torch.randint(0, V, (2, 6)))
    d = state.state_dict()
    assert list(d) == ["mem_valid", "fingerprint", "mems.0", "mems.1", *keys]
    back = LMState.from_state_dict(d)
    assert type(back.memory) is type(state.memory)
    assert back.state_dict().keys() == d.keys() and all(torch.equal(back.state_dict()[k], d[k]) for k in d)


def test_state_reads_the_memory_fields_and_refuses_to_set_them():
    torch.manual_seed(0)
    model = InfiniteFormerLM(tiny("compressive")).eval()
    _, state = model(torch.randint(0, V, (2, 6)))
    assert state.cmem_valid is state.memory.cmem_valid
    with pytest.raises(AttributeError, match="state.memory"):
        state.cmem_valid = torch.zeros(2, dtype=torch.long)
    with pytest.raises(AttributeError, match="no attribute 'ltm'"):
        state.ltm  # noqa: B018
    with pytest.warns(DeprecationWarning, match="LMState.memory"):
        old = LMState(mems=state.mems, mem_valid=state.mem_valid, cmems=state.cmems, cmem_valid=state.cmem_valid,
                      ltm=[], ltm_pending=[], ltm_pending_count=None)  # fmt: skip
    assert isinstance(old.memory, type(state.memory)) and old.cmems == state.cmems


def test_a_state_of_another_memory_type_is_refused():
    torch.manual_seed(0)
    compressive = InfiniteFormerLM(tiny("compressive")).eval()
    infinite = InfiniteFormerLM(tiny("infinite")).eval()
    tokens = torch.randint(0, V, (2, 6))
    _, state = compressive(tokens)
    _, other = infinite(tokens)
    with pytest.raises(ValueError, match="made by another model.*memory_type"):  # the fingerprint
        infinite(tokens, state)
    with pytest.raises(ValueError, match="made by another model.*memory_type"):
        compressive(tokens, other)
    state.fingerprint = other.fingerprint = None  # states saved before fingerprints: the type's check
    with pytest.raises(ValueError, match="no long-term memory"):
        infinite(tokens, state)
    with pytest.raises(ValueError, match="no compressed memory"):
        compressive(tokens, other)
    with pytest.raises(ValueError, match="expected no memory beyond the STM"):
        InfiniteFormerLM(tiny("xl"))(tokens, state)


# --------------------------------------------------------------- a new memory type: one file

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "memory_types.md"


def guide_code() -> tuple[str, str]:
    """The worked example of docs/memory_types.md: (the type's file, its test)."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2, (
        f"{GUIDE.name} should hold the type's file and its test, got {len(blocks)} blocks"
    )
    return blocks[0], blocks[1]


@pytest.fixture
def mean_type(monkeypatch) -> types.ModuleType:
    """The guide's models/mean.py as a module of the package, registered for one test (what its
    registry entry does)."""
    module = types.ModuleType("infinite_former.models.mean")
    module.__package__ = "infinite_former.models"
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses resolve ClassVar through it
    exec(compile(guide_code()[0], str(GUIDE), "exec"), module.__dict__)
    monkeypatch.setitem(MEMORY_TYPES, "mean", module.MeanMemory)
    return module


@pytest.fixture
def mean_model(mean_type):
    torch.manual_seed(0)
    return InfiniteFormerLM(tiny("mean")).eval()


def test_the_guides_own_test_passes(mean_type):
    scope = {"torch": torch, "ModelConfig": ModelConfig, "InfiniteFormerLM": InfiniteFormerLM}
    exec(compile(guide_code()[1], str(GUIDE), "exec"), scope)
    scope["test_mean_memory_holds_the_mean_of_what_left_the_stm"]()


@torch.no_grad()
def test_a_new_memory_type_runs_in_the_lm_and_holds_the_mean_of_what_left_the_stm(mean_model):
    tokens = torch.randint(0, V, (2, 20))
    state = None
    for seg in tokens.split(5, dim=1):  # 20 tokens through an STM of 4: the first 16 leave it
        out, state = mean_model(seg, state)
    assert torch.isfinite(out.logits).all() and float(out.aux_loss) == 0.0
    assert state.memory.count.tolist() == [16, 16]
    left = mean_model.embed(tokens[:, :16])  # layer 0's inputs are the token embeddings
    torch.testing.assert_close(state.memory.sums[0] / 16, left.mean(1, keepdim=True))
    torch.testing.assert_close(state.mems[0], mean_model.embed(tokens[:, 16:]))
    assert memory_labels()["mean"] == "mean of past states"
    # causal: changing the last token changes no earlier logit
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V
    a, b = (torch.cat([o.logits for o in run_all(mean_model, x)], 1) for x in (tokens, changed))
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def run_all(model, tokens: torch.Tensor, seg: int = 5) -> list:
    outs, state = [], None
    for part in tokens.split(seg, dim=1):
        out, state = model(part, state)
        outs.append(out)
    return outs


@torch.no_grad()
def test_a_new_memory_type_is_read_saved_and_reset_like_the_others(mean_model):
    tokens = torch.randint(0, V, (2, 24))
    state = None
    for seg in tokens[:, :20].split(5, dim=1):
        _, state = mean_model(seg, state)
    with_mean = mean_model(tokens[:, 20:], state)[0].logits
    emptied = dataclasses.replace(
        state, memory=dataclasses.replace(state.memory, count=torch.zeros(2).long())
    )
    assert (with_mean - mean_model(tokens[:, 20:], emptied)[0].logits).abs().max() > 1e-4  # the mean is read
    restored = LMState.from_state_dict({k: v.clone() for k, v in state.state_dict().items()})
    assert type(restored.memory).__name__ == "MeanState"
    torch.testing.assert_close(mean_model(tokens[:, 20:], restored)[0].logits, with_mean)
    # row 1 starts a new document: it continues as a fresh stream, row 0 as before
    reset = state.reset(torch.tensor([False, True]))
    out = mean_model(tokens[:, 20:], reset)[0].logits
    torch.testing.assert_close(out[0], with_mean[0])
    torch.testing.assert_close(out[1:], mean_model(tokens[1:, 20:])[0].logits)
    assert mean_model.memory.state_size() == 4 + 1
