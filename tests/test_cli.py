"""End-to-end: `infinite-former sort` with tiny settings; errors before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from infinite_former.cli import build_parser, main

TINY = [
    "--lengths", "30,60",
    "--num-symbols", "4",
    "--segment-len", "16",
    "--mem-len", "8",
    "--num-basis", "8",
    "--num-bins", "8",
    "--d-model", "16",
    "--n-heads", "2",
    "--d-inner", "32",
    "--n-layers", "1",
    "--steps", "4",
    "--batch-size", "4",
    "--eval-sequences", "8",
    "--threads", "1",
    "--device", "cpu",  # compared numbers: CPU fp32 on every machine
    "--no-progress",
]  # fmt: skip


def test_sort_end_to_end_writes_results_and_plot(tmp_path, capsys):
    # two models trained at once in two worker processes
    code = main(["sort", *TINY, "--train-on", "mixed", "--jobs", "2", "--out", str(tmp_path), "--name", "t"])
    assert code == 0
    root = tmp_path / "t"
    results = json.loads((root / "results.json").read_text())
    assert set(results["accuracy"]) == {"infinite_sticky", "xl"}
    for model, by_len in results["accuracy"].items():
        assert set(by_len) == {"30", "60"}
        assert all(0.0 <= a <= 1.0 for a in by_len.values()), (model, by_len)
    for run in results["runs"].values():
        assert run["steps"] == 4 and run["test"]["60"]["num_targets"] == 8 * 4
        assert run["tokens_per_s"] > 0 and run["final_train_loss"] > 0
    assert results["memory_budget"]["xl"]["mem_len"] == 16  # mem_len + N: equal budget
    assert results["machine"]["torch"] == torch.__version__
    png = (root / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    out = capsys.readouterr().out
    assert "infinite_sticky" in out and "xl" in out and "results.json" in out
    # resuming a finished run (in this process) retrains nothing and reproduces the numbers
    code = main(
        [
            "sort",
            *TINY,
            "--train-on",
            "mixed",
            "--jobs",
            "1",
            "--out",
            str(tmp_path),
            "--name",
            "t",
            "--resume",
        ]
    )
    again = json.loads((root / "results.json").read_text())
    assert code == 0 and again["accuracy"] == results["accuracy"]


def test_every_setting_has_a_flag_and_presets_differ():
    parser = build_parser()
    args = parser.parse_args(["sort", "--preset", "paper", "--steps", "7", "--lengths", "4k,8k"])
    from infinite_former.experiments.sort import sort_settings_from_args

    s = sort_settings_from_args(args)
    assert (s.d_model, s.n_layers, s.n_heads, s.d_inner, s.segment_len, s.ltm.num_basis) == (
        300,
        3,
        6,
        300,
        1024,
        512,
    )
    assert s.steps == 7 and s.lengths == (4000, 8000) and s.lr == 2e-4 and s.clip == 0.25
    default = sort_settings_from_args(parser.parse_args(["sort"]))
    assert default.models == ("infinite_sticky", "xl") and default.d_model < 300


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--segment-len", "3"], "segment_len"),
        (["--mem-len", "-1"], "mem_len"),
        (["--tau", "1.5"], "tau"),
        (["--d-model", "30", "--n-heads", "4"], "divisible"),
        (["--steps", "0"], "steps"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, capsys, flags, match):
    code = main(["sort", *TINY, *flags, "--out", str(tmp_path), "--name", "bad"])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_unknown_model_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sort", "--models", "xl,lstm"])
    assert e.value.code == 2 and "lstm" in capsys.readouterr().err


def test_resume_of_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["sort", *TINY, "--out", str(tmp_path), "--name", "nothing", "--resume"]) == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "infinite-former")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "infinite_former.cli"]
    proc = subprocess.run([*cmd, "sort", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--num-basis" in proc.stdout and "--resume" in proc.stdout
