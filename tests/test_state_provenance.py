"""Memory states know the model that made them (issue 20, build 3).

A state records its model's fingerprint (architecture, e, H, N, memory layers, schedule); another
model refuses it naming both; wrong shapes fail in the state check, not inside torch; an
unreadable state file is one ValueError naming the file.
"""

from __future__ import annotations

import pytest
import torch

from infinite_former.hf import HFMemoryState, add_memory
from infinite_former.memory import LTMState
from infinite_former.models import InfiniteFormerLM, LMState, ModelConfig
from test_hf_any import base_model


def hf_model(family: str = "llama", **memory):
    settings = dict(block_size=8, num_basis=16, num_samples=16, num_bins=8, sticky=False) | memory
    return add_memory(base_model(family), **settings).eval()


def ids(n: int = 12):
    return torch.randint(2, 100, (1, n), generator=torch.Generator().manual_seed(0))


def hf_state(model):
    with torch.no_grad():
        return model(ids()).memory


def test_a_state_from_a_qwen2_model_is_refused_by_a_llama_model(tmp_path):
    state = hf_state(hf_model("qwen2"))
    state.save(tmp_path / "qwen2.pt")
    llama = hf_model("llama")
    for given in (state, HFMemoryState.load(tmp_path / "qwen2.pt")):
        with pytest.raises(ValueError, match=r"made by Qwen2ForCausalLM.*given to LlamaForCausalLM"):
            llama(ids(3), memory=given)
        with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
            llama.generate(ids(3), memory=given, max_new_tokens=2)
    llama(ids(3), memory=hf_state(llama))  # its own state is fine


def test_a_state_with_another_n_fails_in_the_state_check(tmp_path):
    state = hf_state(hf_model(num_basis=8))
    model = hf_model(num_basis=16)
    with pytest.raises(ValueError, match=r"num_basis: 8 != 16"):
        model(ids(3), memory=state)
    old = HFMemoryState.from_state_dict({k: v for k, v in state.state_dict().items() if k != "fingerprint"})
    assert old.fingerprint is None  # a state saved before fingerprints: its shapes are still checked
    with pytest.raises(ValueError, match=r"coeffs \(batch, N, e\) has shape \(1, 8, 32\).*\(1, 16, 32\)"):
        model(ids(3), memory=old)


def test_another_schedule_is_refused():
    with pytest.raises(ValueError, match="tau: 0.75 != 0.5"):
        hf_model(tau=0.5)(ids(3), memory=hf_state(hf_model(tau=0.75)))


def write_bad(path, how):
    good = path.with_suffix(".good")
    torch.save({"coeffs": torch.zeros(1, 2, 3)}, good)
    data = good.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"uzuzuzuzuzuz" * 9, "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("cls", [HFMemoryState, LTMState])
def test_unreadable_state_files_are_one_line_naming_the_file(tmp_path, how, cls):
    path = tmp_path / f"{how}.pt"
    write_bad(path, how)
    with pytest.raises(ValueError) as err:
        cls.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=str(tmp_path / "missing.pt")):
        cls.load(tmp_path / "missing.pt")


def lm(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=13, d_model=32, n_layers=2, n_heads=4, d_inner=64, dropout=0.0, mem_len=6)
    ltm = dict(num_basis=16, num_samples=16, num_bins=16) | kw.pop("ltm", {})
    return InfiniteFormerLM(ModelConfig(**base, ltm=ltm, **kw)).eval()


def test_an_lm_state_knows_its_model(tmp_path):
    tokens = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(0))
    model = lm()
    _, state = model(tokens)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    loaded = LMState.from_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert loaded.fingerprint == model.memory_fingerprint()
    torch.testing.assert_close(model(tokens, loaded)[0].logits, model(tokens, state)[0].logits)
    with pytest.raises(ValueError, match="tau: 0.5 != 0.75"):
        lm(ltm={"tau": 0.75})(tokens, loaded)
    with pytest.raises(ValueError, match="memory_type"):
        lm(memory_type="xl")(tokens, loaded)
    loaded.fingerprint = None  # a state saved before fingerprints: the shapes are checked
    with pytest.raises(
        ValueError,
        match=r"state does not fit this model.*ltm\[0\]\.coeffs.*\(2, 16, 32\).*needs \(2, 8, 32\)",
    ):
        lm(ltm={"num_basis": 8, "num_samples": 8})(tokens, loaded)
