"""The memory-type protocol (models/memory_type.py) and its registry (models/registry.py): every type
spends the same budget, carries its label, keeps its checkpoint keys, and a new type plugs into the
LM with one class and one registry entry (a toy "mean of past states" type, defined here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from infinite_former.experiments.sort import SortSettings
from infinite_former.models import (
    MEMORY_TYPES,
    InfiniteFormerLM,
    LMState,
    MemoryType,
    ModelConfig,
    memory_labels,
    memory_type_class,
)
from infinite_former.models.compressive import concat_right_aligned, valid_mask
from infinite_former.models.memory_type import LayerRead, SegmentPlan, layer_tensors

V = 11


def tiny(memory_type: str, **kw) -> ModelConfig:
    base = dict(
        vocab_size=V, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0, mem_len=4,
        memory_type=memory_type, cmem_len=4, compression_rate=2, ltm_num_basis=8, ltm_num_samples=8,
        ltm_num_bins=8,
    )  # fmt: skip
    base.update(kw)
    return ModelConfig(**base)


# ------------------------------------------------------------------------- budget, labels, sizes


@pytest.mark.parametrize("name", list(MEMORY_TYPES))
def test_every_memory_type_spends_the_equal_budget(name):
    """equal_budget(m, N) gives each type a memory of m + N vectors per layer (its state_size)."""
    kind = memory_type_class(name)
    for mem_len, n in [(4, 8), (6, 16)]:
        cfg = tiny(name, ltm_num_basis=n, ltm_num_samples=n, **kind.equal_budget(mem_len, n))
        assert kind(cfg).state_size() == mem_len + n


def test_sort_settings_give_every_type_the_same_budget():
    s = SortSettings(models=tuple(MEMORY_TYPES), mem_len=8, num_basis=16, steps=1, eval_sequences=1)
    sizes = {name: memory_type_class(name)(s.model_config(name)).state_size() for name in MEMORY_TYPES}
    assert sizes == dict.fromkeys(MEMORY_TYPES, 8 + 16)
    budget = s.memory_budget()
    assert set(budget) == {"rule", *MEMORY_TYPES}
    assert budget["xl"] == {"mem_len": 24} and budget["compressive"]["cmem_len"] == 16
    assert budget["infinite"] == {"mem_len": 8, "num_basis": 16, "num_samples": 16}
    # explicit sizes win over the rule
    s = SortSettings(mem_len=8, num_basis=16, xl_mem_len=10, cmem_len=5, steps=1, eval_sequences=1)
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
    """Saved memories keep 0.2's flat keys, and load back into the right memory type's state."""
    torch.manual_seed(0)
    model = InfiniteFormerLM(tiny(name)).eval()
    _, state = model(torch.randint(0, V, (2, 6)))
    d = state.state_dict()
    assert list(d) == ["mem_valid", "mems.0", "mems.1", *keys]
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
    with pytest.raises(ValueError, match="no long-term memory"):
        infinite(tokens, state)
    with pytest.raises(ValueError, match="no compressed memory"):
        compressive(tokens, infinite(tokens)[1])
    with pytest.raises(ValueError, match="expected no memory beyond the STM"):
        InfiniteFormerLM(tiny("xl"))(tokens, state)


# --------------------------------------------------------------- a new memory type: one class


@dataclass
class MeanState:
    """sums: per layer (batch, 1, e) Σ of the layer inputs that left the STM; count (batch,)."""

    sums: list[Tensor]
    count: Tensor

    MARKER: ClassVar[str] = "mean_count"

    def map(self, fn: Callable[[Tensor], Tensor]) -> MeanState:
        return MeanState([fn(t) for t in self.sums], fn(self.count))

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"mean_sums.{i}": t for i, t in enumerate(self.sums)}, "mean_count": self.count}

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> MeanState:
        return cls(layer_tensors(d, "mean_sums"), d["mean_count"])


class MeanMemory(MemoryType):
    """Toy type: the STM plus one slot, the mean of every layer input that left it; attention runs
    over [mean; mem; segment]."""

    name: ClassVar[str] = "mean"
    label: ClassVar[str] = "mean of past states"
    budget_rule: ClassVar[str] = "mean: mem_len + N - 1 STM + 1 mean"
    state_class: ClassVar[type | None] = MeanState

    @classmethod
    def equal_budget(cls, mem_len: int, num_basis: int) -> dict[str, int]:
        return {"mem_len": mem_len + num_basis - 1}

    def state_size(self) -> int:
        return self.config.mem_len + 1

    def init_state(self, batch_size: int, layers: nn.ModuleList, empty: Tensor, count: Tensor) -> MeanState:
        return MeanState([empty.new_zeros(batch_size, 1, empty.shape[-1]) for _ in layers], count.clone())

    def check_state(self, memory: Any, n_layers: int) -> None:
        if not isinstance(memory, MeanState) or len(memory.sums) != n_layers:
            raise ValueError("state has no mean memory, expected one for memory_type 'mean'")

    def plan(self, memory: MeanState, mem_valid: Tensor, mem_width: int, T: int) -> SegmentPlan:
        plan = super().plan(memory, mem_valid, mem_width, T)  # the STM as in Transformer-XL
        has_mean = (memory.count > 0).long()  # (b,)
        leaving = mem_valid + T - plan.keep  # (b,) vectors each row drops now
        extra = (has_mean, leaving, memory.count + leaving)
        return dataclasses.replace(plan, window=mem_width + 1, attended=mem_valid + has_mean, extra=extra)

    def window(
        self, memory: MeanState, layer: int, block: Tensor, h: Tensor, mem_valid: Tensor, plan: SegmentPlan
    ) -> Tensor:
        mean = memory.sums[layer] / memory.count.clamp_min(1)[:, None, None]  # (b, 1, e)
        mems = block[:, : block.shape[1] - h.shape[1]]
        window = concat_right_aligned(mean, plan.extra[0], mems, mem_valid, plan.window)  # right-aligned
        return torch.cat([window, h], dim=1)

    def read(self, blk, memory, layer, x, block, h, plan, return_densities) -> LayerRead:
        leaving = block[:, : plan.leaving].detach()  # (b, P, e): row i's last leaving[i] are valid
        ok = valid_mask(plan.extra[1], plan.leaving)[..., None]
        return LayerRead(state=memory.sums[layer] + (leaving * ok).sum(1, keepdim=True))

    def finish(self, reads, plan, like):
        return MeanState([r.state for r in reads], plan.extra[2]), like.new_zeros(()), {}


@pytest.fixture
def mean_model(monkeypatch):
    """The toy type registered for one test (what its registry line does), in a tiny LM."""
    monkeypatch.setitem(MEMORY_TYPES, "mean", MeanMemory)
    torch.manual_seed(0)
    return InfiniteFormerLM(tiny("mean")).eval()


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
    assert MeanMemory.label in memory_labels().values()


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
    assert isinstance(restored.memory, MeanState)
    torch.testing.assert_close(mean_model(tokens[:, 20:], restored)[0].logits, with_mean)
    # row 1 starts a new document: it continues as a fresh stream, row 0 as before
    reset = state.reset(torch.tensor([False, True]))
    out = mean_model(tokens[:, 20:], reset)[0].logits
    torch.testing.assert_close(out[0], with_mean[0])
    torch.testing.assert_close(out[1:], mean_model(tokens[1:, 20:])[0].logits)
    assert MeanMemory(mean_model.config).state_size() == 4 + 1
