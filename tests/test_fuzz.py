"""Property-based tests (hypothesis) over everything that reads saved or user-given input
(issue 20, build 6): the config dataclasses, the CMU-DoG and JSONL readers, the memory state
loaders and the adapter loader. Malformed or random input gives a clear ValueError (the
project's error for bad input) or a correct result: never another exception, a hang, or a
changed model. Each property runs a bounded number of examples (the file takes seconds);
``CASES`` counts the examples tried, printed at the end (pytest -s) for the issue's report.
"""

from __future__ import annotations

import collections
import json
import math
import string
from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig

from infinite_former.attention import LTMConfig
from infinite_former.data.dialogue import Dialogue, read_cmu_dog, read_jsonl
from infinite_former.hf import HFMemoryState, MemoryConfig, add_memory, load_memory, save_memory
from infinite_former.memory import LTMState
from infinite_former.models import InfiniteFormerLM, LMState, ModelConfig
from infinite_former.training import TrainConfig

CASES: collections.Counter[str] = collections.Counter()
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print(f"\nfuzz cases tried: {dict(CASES)} (total {sum(CASES.values())})")


def clear(fn, *args, **kwargs):
    """fn's result, or None when it raised a ValueError with a message; any other exception fails."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        assert str(err).strip(), "a ValueError without a message"
        return None


# ------------------------------------------------------------------ config dataclasses

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 1000),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=6),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
CONFIGS = [  # each over a complete saved form (saved configs are read strictly: every field)
    (MemoryConfig, MemoryConfig().to_dict()),
    (ModelConfig, ModelConfig(vocab_size=11, d_model=16, n_heads=2, d_inner=16).to_dict()),
    (LTMConfig, LTMConfig(d_model=8, n_heads=2).to_dict()),
    (TrainConfig, {"device": "cpu"}),
]


@pytest.mark.parametrize("cls, base", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_config_from_dict_is_a_config_or_a_value_error(cls, base):
    names = [f.name for f in fields(cls)]
    keys = st.one_of(st.sampled_from(names), st.text(string.ascii_lowercase + "_", min_size=1, max_size=8))

    @FAST
    @given(st.dictionaries(keys, JSON_VALUES, max_size=4))
    def check(d):
        CASES[f"config:{cls.__name__}"] += 1
        config = clear(cls.from_dict, {**base, **d})
        if config is not None:  # a config that loads survives its own round trip
            assert cls.from_dict(config.to_dict()) == config

    check()


# ------------------------------------------------------------------ dialogue readers

MESSAGE = st.fixed_dictionaries(
    {"uid": st.one_of(st.text(max_size=3), st.integers()), "text": st.text(max_size=20)}
)
ANY_JSON = st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4))


def wiki_doc(idx: int):
    return st.fixed_dictionaries(
        {
            "wikiDocumentIdx": st.just(idx),
            "0": st.dictionaries(
                st.text(max_size=5), st.one_of(st.text(max_size=8), st.lists(st.text(max_size=4))), max_size=3
            ),
            "1": st.text(max_size=30),
            "2": st.text(max_size=30),
            "3": st.text(max_size=30),
        }
    )


def conversation():
    return st.fixed_dictionaries(
        {
            "wikiDocumentIdx": st.one_of(st.integers(0, 2), ANY_JSON),
            "history": st.one_of(st.lists(MESSAGE, max_size=4), ANY_JSON),
        }
    )


def maybe_broken(good):
    """A valid-looking object, one with a field removed, or anything JSON."""
    return st.one_of(good, good.map(lambda d: {k: v for k, v in list(d.items())[1:]}), ANY_JSON)


def test_cmu_dog_reader_on_random_files(tmp_path_factory):
    @FAST
    @given(
        st.lists(maybe_broken(st.integers(0, 2).flatmap(wiki_doc)), min_size=1, max_size=3),
        st.lists(maybe_broken(conversation()), min_size=0, max_size=3),
        st.booleans(),
    )
    def check(wiki, convs, garbage):
        CASES["reader:cmu_dog"] += 1
        root = tmp_path_factory.mktemp("dog")
        (root / "WikiData").mkdir()
        (root / "Conversations" / "train").mkdir(parents=True)
        for i, doc in enumerate(wiki):
            (root / "WikiData" / f"{i}.json").write_text(json.dumps(doc))
        for i, conv in enumerate(convs):
            (root / "Conversations" / "train" / f"c{i}.json").write_text(json.dumps(conv))
        if garbage:
            (root / "Conversations" / "train" / "z.json").write_bytes(b"\xff\xfe{not json")
        out = clear(read_cmu_dog, root, "train")
        if out is not None:
            assert len(out) == len(convs) and all(isinstance(d, Dialogue) for d in out)

    check()


def test_jsonl_reader_on_random_lines(tmp_path_factory):
    good = st.fixed_dictionaries(
        {
            "document": st.text(max_size=20),
            "turns": st.lists(
                st.fixed_dictionaries({"speaker": st.text(max_size=3), "text": st.text(max_size=10)}),
                max_size=3,
            ),
        }
    )
    line = st.one_of(
        maybe_broken(good).map(json.dumps),
        st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t),
    )

    @FAST
    @given(st.lists(line, max_size=4), st.binary(max_size=8))
    def check(lines, tail):
        CASES["reader:jsonl"] += 1
        path = tmp_path_factory.mktemp("jsonl") / "d.jsonl"
        path.write_bytes("\n".join(lines).encode() + (b"\n" + tail if tail else b""))
        out = clear(read_jsonl, path)
        if out is not None:
            assert all(isinstance(d, Dialogue) for d in out)

    check()


# ------------------------------------------------------------------ state loaders

SIZES = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        **SIZES, num_key_value_heads=1, max_position_embeddings=32, bos_token_id=0, eos_token_id=1
    )
    model = add_memory(
        AutoModelForCausalLM.from_config(config),
        block_size=4,
        num_basis=4,
        num_samples=4,
        num_bins=4,
        sticky=False,
    )
    return model.eval()


@pytest.fixture(scope="module")
def hf_state(hf_model):
    with torch.no_grad():
        return hf_model(torch.arange(2, 8).view(1, 6)).memory


def mutate(d: dict, data) -> dict:
    """A state dict with one entry dropped, reshaped, retyped, replaced by garbage or renamed."""
    d = dict(d)
    key = data.draw(st.sampled_from(sorted(d)))
    how = data.draw(st.sampled_from(["drop", "shape", "dtype", "garbage", "rename", "nan", "keep"]))
    v = d[key]
    if how == "drop":
        del d[key]
    elif how == "shape" and isinstance(v, torch.Tensor):
        d[key] = torch.zeros(
            [data.draw(st.integers(0, 5)) for _ in range(data.draw(st.integers(0, 4)))], dtype=v.dtype
        )
    elif how == "dtype" and isinstance(v, torch.Tensor):
        d[key] = v.to(data.draw(st.sampled_from([torch.float32, torch.int64, torch.bool, torch.float16])))
    elif how == "garbage":
        d[key] = data.draw(JSON_VALUES)
    elif how == "rename":
        d[key + "x"] = d.pop(key)
    elif how == "nan" and isinstance(v, torch.Tensor) and v.is_floating_point():
        d[key] = torch.full_like(v, math.nan)
    return d


def test_hf_state_loading_and_feeding(hf_model, hf_state):
    ids = torch.arange(3, 6).view(1, 3)

    @FAST
    @given(st.data())
    def check(data):
        CASES["state:HFMemoryState"] += 1
        state = clear(HFMemoryState.from_state_dict, mutate(hf_state.state_dict(), data))
        if state is not None:
            with torch.no_grad():
                out = clear(hf_model, ids, memory=state)
            if out is not None:
                assert out.logits.shape == (1, 3, SIZES["vocab_size"]) and bool(out.logits.isfinite().all())

    check()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return InfiniteFormerLM(
        ModelConfig(
            vocab_size=11,
            d_model=16,
            n_layers=1,
            n_heads=2,
            d_inner=16,
            mem_len=4,
            ltm={"num_basis": 4, "num_samples": 4, "num_bins": 4},
        )
    ).eval()


def test_lm_state_loading_and_feeding(lm):
    tokens = torch.arange(0, 8).view(2, 4) % 11
    with torch.no_grad():
        _, good = lm(tokens)

    @FAST
    @given(st.data())
    def check(data):
        CASES["state:LMState"] += 1
        state = clear(LMState.from_state_dict, mutate(good.state_dict(), data))
        if state is not None:
            with torch.no_grad():
                out = clear(lm, tokens, state)
            if out is not None:
                assert out[0].logits.shape == (2, 4, 11) and bool(out[0].logits.isfinite().all())

    check()


def test_state_files_of_random_bytes(tmp_path_factory, hf_state):
    saved = tmp_path_factory.mktemp("state") / "good.pt"
    hf_state.save(saved)
    raw = saved.read_bytes()

    @FAST
    @given(
        st.one_of(
            st.binary(max_size=64),
            st.integers(0, len(raw)).map(lambda n: raw[:n]),
            st.binary(min_size=1, max_size=8).map(lambda b: raw[:200] + b + raw[208:]),
        )
    )
    def check(blob):
        CASES["state:files"] += 1
        path = tmp_path_factory.mktemp("state") / "s.pt"
        path.write_bytes(blob)
        for cls in (HFMemoryState, LTMState):
            try:
                cls.load(path)
            except ValueError as err:
                assert str(path) in str(err) and "\n" not in str(err)

    check()


# ------------------------------------------------------------------ adapter loader


def snapshot(model):
    return (
        type(model),
        {k: v.clone() for k, v in model.state_dict().items()},
        dict(model.config.infinite_memory or {}),
    )


def test_adapter_loader_on_random_configs_and_bytes(tmp_path_factory, hf_model):
    adapter = tmp_path_factory.mktemp("adapter") / "a"
    save_memory(hf_model, adapter)
    info, weights = (
        json.loads((adapter / "memory_config.json").read_text()),
        (adapter / "memory_adapter.safetensors").read_bytes(),
    )
    target = add_memory(
        AutoModelForCausalLM.from_config(hf_model.config),
        block_size=4,
        num_basis=4,
        num_samples=4,
        num_bins=4,
    )
    settings_keys = sorted(info["memory_config"])

    @FAST
    @given(
        st.sampled_from(["setting", "top", "bytes", "cut", "none"]),
        st.sampled_from(settings_keys),
        st.sampled_from(sorted(info)),
        JSON_VALUES,
        st.integers(0, len(weights)),
        st.binary(min_size=1, max_size=4),
    )
    def check(how, key, top, value, n, patch):
        CASES["adapter:load_memory"] += 1
        folder = tmp_path_factory.mktemp("a")
        new, blob = json.loads(json.dumps(info)), weights
        if how == "setting":
            new["memory_config"][key] = value
        elif how == "top":
            new[top] = value
        elif how == "bytes":
            blob = weights[:n] + patch + weights[n + len(patch) :]
        elif how == "cut":
            blob = weights[:n]
        (folder / "memory_config.json").write_text(json.dumps(new))
        (folder / "memory_adapter.safetensors").write_bytes(blob)
        before = snapshot(target)
        loaded = clear(load_memory, target, folder)
        if loaded is None:  # refused: the model is exactly as it was
            cls, sd, mem = before
            now = target.state_dict()
            assert type(target) is cls and target.config.infinite_memory == mem and list(now) == list(sd)
            assert all(torch.equal(now[k], v) for k, v in sd.items())
        else:
            assert all(torch.isfinite(p).all() for p in loaded.memory_parameters())

    check()


def test_cases_were_tried():
    assert sum(CASES.values()) > 0
