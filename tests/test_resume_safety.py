"""Safe resume (issue 20, build 4): everything is checked before anything is written; a resume with
other settings is refused listing them, --override KEY=VALUE changes what may change; interrupted
runs exit 130 / 143 after saving; stale temporary checkpoints are removed; checkpoints are fsynced
before the rename that makes them current."""

from __future__ import annotations

import json
import os
import signal

import pytest

from infinite_former.cli import main
from infinite_former.data.text import LaneStream
from infinite_former.training import TrainConfig, Trainer, find_checkpoint
from test_lm_cli import TINY, tiny_gpt2, write_corpus

FINETUNE = "--block-size 8 --steps 2 --num-basis 8 --num-samples 8 --eval-splits --device cpu".split()
QUIET = ["--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(root / "corpus")
    gpt2 = tiny_gpt2(root / "hf", corpus)
    argv = ["lm", "finetune", "--model", str(gpt2), "--data", str(corpus), "--run-dir", str(root / "ft")]
    assert main([*argv, "--batch-size", "2", *FINETUNE, *QUIET]) == 0
    return root / "ft", argv


@pytest.mark.parametrize(
    "change, listed",
    [
        (["--batch-size", "4"], "train.batch_size: run 2, now 4"),
        (
            ["--batch-size", "2", "--tau", "0.9", "--sampling", "uniform"],
            "overrides.sticky: run None, now False",
        ),
        (["--batch-size", "2", "--lr", "0.001"], "train.lr: run 5e-05, now 0.001"),
    ],
)
def test_a_resume_with_other_settings_is_refused_and_writes_nothing(finetuned, capsys, change, listed):
    run_dir, argv = finetuned
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main([*argv, *change, *FINETUNE, *QUIET, "--resume"]) == 2
    err = capsys.readouterr().err
    assert listed in err and "--override" in err
    if "--tau" in change:
        assert "overrides.tau: run None, now 0.9" in err
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # lm_config.json (and everything else) untouched


def test_override_changes_what_may_change_and_memory_settings_cannot(finetuned, capsys):
    run_dir, argv = finetuned
    base = [*argv, "--batch-size", "2", *FINETUNE, *QUIET, "--resume"]
    assert main([*base, "--override", "tau=0.9"]) == 2
    assert "'tau' cannot change when resuming" in capsys.readouterr().err
    assert main([*argv, "--batch-size", "2", *FINETUNE, *QUIET, "--override", "steps=3"]) == 2
    assert "use it with --resume" in capsys.readouterr().err
    assert main([*base, "--override", "steps=3", "--override", "lr=1e-4"]) == 0
    saved = json.loads((run_dir / "lm_config.json").read_text())
    assert saved["train"]["steps"] == 3 and saved["train"]["lr"] == 1e-4
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_exits_128_plus_the_signal_after_saving(tmp_path, monkeypatch, sig):
    corpus = write_corpus(tmp_path / "corpus")
    argv = ["lm", "train", "--data", str(corpus), "--run-dir", str(tmp_path / "r"), "--tokenizer", "bytes"]
    original = LaneStream.__iter__

    def interrupt(self):
        for i, seg in enumerate(original(self)):
            if i == 1:
                os.kill(os.getpid(), sig)
            yield seg

    monkeypatch.setattr(LaneStream, "__iter__", interrupt)
    assert main([*argv, *TINY, "--memory-type", "xl", "--eval-splits"]) == 128 + sig
    assert find_checkpoint(tmp_path / "r").endswith("step-00000002")
    assert json.loads((tmp_path / "r" / "results.json").read_text())["stop_signal"] == sig


def test_stale_temporary_checkpoints_are_removed_and_checkpoints_are_fsynced(tmp_path, monkeypatch):
    from test_train import sorting_stream, tiny_model

    out = tmp_path / "run"
    stale = out / "checkpoints" / ".step-00000007.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    config = TrainConfig(
        steps=2, batch_size=4, out_dir=str(out), progress=False, tensorboard=False, device="cpu"
    )
    Trainer(tiny_model(), config, sorting_stream).fit()
    assert not stale.exists()
    tmp = str(out / "checkpoints" / ".step-00000002.tmp")
    moved = events.index(("replace", tmp))
    synced = {path for kind, path in events[:moved] if kind == "fsync"}
    for name in ("model.safetensors", "trainer.pt", "rank0.pt", "config.json"):
        assert f"{tmp}/{name}" in synced
    assert tmp in synced  # the folder itself


def test_an_interrupted_sort_exits_130_on_sigint(tmp_path, monkeypatch):
    from infinite_former.data.sorting import SortingStream
    from test_cli import TINY as SORT_TINY

    original = SortingStream.__iter__

    def interrupt(self):
        for i, seg in enumerate(original(self)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield seg

    monkeypatch.setattr(SortingStream, "__iter__", interrupt)
    argv = ["sort", *SORT_TINY, "--models", "xl", "--jobs", "1", "--out", str(tmp_path), "--name", "s"]
    assert main(argv) == 128 + signal.SIGINT
