"""benchmarks/gpu_suite.py: the dry run (every step on the CPU at toy sizes) and the goal verdicts."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_suite.py"
STEPS = [
    "pytest_cuda",
    "ltm_float32_eager",
    "ltm_bfloat16_eager",
    "ltm_float32_compiled",
    "ltm_bfloat16_compiled",
    "generation",
    "sort_paper_4k",
    "lm_shakespeare_large",
]


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_step(tmp_path):
    words = "the king queen lord lady sword crown castle night day love death war peace".split()
    rng = random.Random(0)
    for split in ("train", "test"):
        (tmp_path / "plays" / split).mkdir(parents=True)
        (tmp_path / "plays" / split / "a.txt").write_text(" ".join(rng.choice(words) for _ in range(60)))
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")]
    cmd += ["--work", str(tmp_path / "work"), "--data", str(tmp_path / "plays")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = (tmp_path / "out" / "gpu_dry_run.json").read_text()
    assert str(tmp_path) not in raw and str(REPO) not in raw  # no absolute paths
    data = json.loads(raw)
    assert data["dry_run"] and "cuda" in data["machine"] and "torch" in data["machine"]
    assert list(data["steps"]) == STEPS
    for name, step in data["steps"].items():
        assert step["status"] == "ok", (name, step["status"])
    assert data["steps"]["pytest_cuda"]["counts"]["skipped"] > 0  # collected, skipped without CUDA
    ltm = data["steps"]["ltm_float32_eager"]
    assert set(ltm["ltm_ms_by_context"]) == {"64", "256"} and ltm["sdpa_ms"] > 0
    sort = data["steps"]["sort_paper_4k"]["runs"]
    assert {"infinite_sticky/fp32", "infinite_sticky/bf16"} <= set(sort)
    assert all(0 <= r["accuracy"] <= 1 for r in sort.values() if r["status"] == "ok")
    lm = data["steps"]["lm_shakespeare_large"]
    assert lm["partial"] and all(r["status"] == "ok" and r["test_ppl"] > 1 for r in lm["runs"].values())
    assert set(data["goals"]) == set(load_suite().GOALS)
    verdicts = ("met", "not met", "not measured")
    for goal in data["goals"].values():  # a dry run measures no goal, but computes each verdict
        assert goal["status"] == "not measured" and goal["dry_run_verdict"] in verdicts
    table = load_suite().render_markdown(data)
    assert "| float32 eager |" in table and "not measured" in table and "infinite_sticky/bf16" in table


def test_missing_data_is_a_recorded_skip(tmp_path):
    suite = load_suite()
    args = suite.parse(
        ["--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "w"), "--data", "nowhere"]
    )
    s = suite.Suite(args)
    s.run("lm_shakespeare_large", 60, lambda limit: suite.step_shakespeare(s, limit))
    args.budget_s = 1.0  # the budget is spent: the next step is skipped, not started
    s.run("generation", 60, lambda limit: pytest.fail("must not start"))
    data = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert data["steps"]["lm_shakespeare_large"]["status"].startswith("skipped: no data folder")
    assert data["steps"]["generation"]["status"].startswith("skipped: out of time budget")


def test_goal_verdicts():
    suite = load_suite()

    def ltm(ms, ratio, spread, context=1_048_576):
        return {
            "status": "ok",
            "ltm_ms_median": ms,
            "max_context": context,
            "ratios": {"ltm_over_plain_time": ratio, "ltm_time_max_over_min": spread},
        }

    def sort(fp32, bf16):
        runs = {"infinite_sticky/fp32": {"status": "ok", "accuracy": fp32, "chance": 0.05}}
        runs["infinite_sticky/bf16"] = {"status": "ok", "accuracy": bf16, "chance": 0.05}
        return {"status": "ok", "runs": runs}

    steps = {
        "ltm_float32_eager": ltm(10.0, 1.4, 1.05),
        "ltm_float32_compiled": ltm(7.0, 1.0, 1.02),
        "sort_paper_4k": sort(0.80, 0.795),
    }
    g = suite.goals(steps)
    assert [g[k]["status"] for k in suite.GOALS] == ["met", "met", "met", "met"]
    steps = {
        "ltm_float32_eager": ltm(10.0, 1.6, 1.3, context=65_536),
        "ltm_float32_compiled": {"status": "failed: boom"},
        "sort_paper_4k": sort(0.80, 0.70),
    }
    g = suite.goals(steps)
    assert g["ltm_fwd_bwd_le_1.5x_sdpa"]["status"] == "not met"
    assert g["flat_cost_4k_to_1M"]["status"] == "not measured"  # the stream stopped at 64k
    assert g["bf16_within_1pct_of_fp32_sorting"]["status"] == "not met"
    assert g["compiled_ge_1.3x_eager"]["status"] == "not measured"
    assert all(v["status"] == "not measured" for v in suite.goals({}).values())
    chance = suite.goals({"sort_paper_4k": sort(0.06, 0.06)})["bf16_within_1pct_of_fp32_sorting"]
    assert chance["status"] == "not measured" and "chance" in chance["why"]  # equal, but nothing learned
