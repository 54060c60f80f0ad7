"""TrainConfig.compile / sort --compile: the compiled training run computes what the eager one does."""

from __future__ import annotations

import shutil

import pytest
import torch

from infinite_former.cli import build_parser
from infinite_former.experiments.sort import SortSettings, sort_settings_from_args
from infinite_former.training import Trainer, find_checkpoint
from test_train import SigtermAfter, cfg, sorting_stream, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo's notes on traced builtins
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile on the CPU (inductor) needs a C++ compiler",
)


@needs_compiler
def test_compiled_training_resumed_from_an_eager_checkpoint_matches_eager_training(tmp_path):
    """Uniform samples (no random draws in the model): the losses of a run that trains 3 steps
    eagerly, stops, and resumes compiled equal those of an eager run, to float rounding. The
    compiled half covers no-grad passes, training segments and memories of every width."""
    eager = Trainer(tiny_model("infinite"), cfg(tmp_path / "a"), sorting_stream).fit()
    part = Trainer(tiny_model("infinite"), cfg(tmp_path / "b"), SigtermAfter(sorting_stream, 3)).fit()
    assert part.stopped_by_signal and part.step == 3
    assert find_checkpoint(tmp_path / "b" / "run").endswith("step-00000003")
    torch._dynamo.reset()
    rest = Trainer(tiny_model("infinite", seed=9), cfg(tmp_path / "b", compile=True), sorting_stream).fit(
        resume=True
    )
    assert rest.step == 6 and len(rest.losses) == 3
    got, want = torch.tensor(part.losses + rest.losses), torch.tensor(eager.losses)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got, want)
    assert not torch.equal(torch.tensor(rest.losses), torch.tensor(eager.losses[:3]))  # not the first steps


@needs_compiler
def test_compiled_sticky_training_learns(tmp_path):
    """Sticky samples draw from the compiled kernels' generator: other draws than eager, same task."""
    torch._dynamo.reset()
    res = Trainer(tiny_model(), cfg(tmp_path, steps=12, batch_size=8, compile=True), sorting_stream).fit()
    assert len(res.losses) == 12 and all(torch.isfinite(torch.tensor(res.losses)))
    assert sum(res.losses[-3:]) / 3 < sum(res.losses[:3]) / 3 - 0.15, res.losses


@pytest.mark.parametrize(
    "argv,expected",
    [([], False), (["--compile"], True), (["--compile", "on"], True), (["--compile", "off"], False)],
)
def test_sort_compile_flag(argv, expected):
    s = sort_settings_from_args(build_parser().parse_args(["sort", *argv]))
    assert s.compile is expected and s.train_config("run").compile is expected
    assert SortSettings.from_dict(s.to_dict()).compile is expected


def test_sort_settings_saved_before_the_compile_setting_load_as_eager():
    d = SortSettings().to_dict()
    del d["compile"]
    assert SortSettings.from_dict(d).compile is False


def test_sort_compile_flag_rejects_other_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sort", "--compile", "maybe"])
    assert "--compile" in capsys.readouterr().err


@needs_compiler
def test_compiled_model_rejects_out_of_range_tokens_and_targets():
    model = tiny_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=False)
    v = model.config.vocab_size
    tokens = torch.randint(0, v, (2, 8))
    with torch.no_grad():
        _, state = compiled(tokens, model.init_state(2))
        bad = tokens.clone()
        bad[1, 3] = v
        with pytest.raises(RuntimeError, match=r"tokens must be in \[0, "):
            compiled(bad, state)
        with pytest.raises(RuntimeError, match="targets must be < vocab_size"):
            compiled(tokens, state, targets=bad)
