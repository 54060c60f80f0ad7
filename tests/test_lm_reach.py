"""benchmarks/lm_reach.py (issue 18's carry-back to the LM): the variant's settings, and the summary's
pairing by seed and test play with the LM benchmark's records and its reproduction check."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from infinite_former.attention import auto_widths

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # lm_reach imports lm_shakespeare from its folder
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("lm_reach")


def test_infinite_reach_is_the_paper_infinite_former_with_the_reach_options(bench, tmp_path):
    lm = bench.lm
    cfg = {
        v: lm.train_settings(v, 0, tmp_path / v, "bpe", tmp_path / "cache").model_config(lm.S["vocab_size"])
        for v in ("infinite", "infinite_reach")
    }
    reach, paper = cfg["infinite_reach"], cfg["infinite"]
    assert (reach.ltm.schedule, paper.ltm.schedule) == ("uniform_time", "fixed")
    assert reach.ltm.basis_widths == auto_widths(lm.S["num_basis"]) != paper.ltm.basis_widths
    assert not reach.ltm.sticky and reach.memory_type == paper.memory_type == "infinite"
    # nothing else differs: same model, same LTM size
    same = lambda c: {**c.to_dict(), "ltm": {**c.to_dict()["ltm"], "schedule": 0, "widths": 0}}  # noqa: E731
    assert same(reach) == same(paper)
    assert lm.memory_flags("infinite_reach")[-5:] == [
        "--schedule",
        "uniform_time",
        "--widths",
        "auto",
        "--ltm-zero-init-output",
    ]


PLAYS = {"lear": 900, "much_ado": 700, "richard_ii": 800}  # tokens per play


def record(variant: str, seed: int, nll: dict[str, float], tokens: dict[str, int] = PLAYS) -> dict:
    """A run record as lm_shakespeare.run_one writes it, from NLL per token of each play."""
    per_doc = {d: {"nll": nll[d] * tokens[d], "tokens": tokens[d], "bytes": 3 * tokens[d]} for d in nll}
    mean = sum(v["nll"] for v in per_doc.values()) / sum(tokens.values())
    return {
        "variant": variant, "seed": seed, "parameters": 1000, "flags": [], "per_document": per_doc,
        "test_ppl": math.exp(mean), "test_bpb": mean / math.log(2) / 3, "machine": {"cpu_model": "test"},
    }  # fmt: skip


def base_nll(seed: int) -> dict[str, float]:
    """Different per play and per seed, so a pairing that mixes plays or seeds shows."""
    return {d: 3.0 + 0.3 * i + 0.11 * seed for i, d in enumerate(PLAYS)}


def test_summary_pairs_each_model_by_seed_and_play(bench):
    shift = {o: 0.01 * (i + 1) for i, o in enumerate(bench.OTHERS)}  # other = reach + shift, every unit
    theirs = {
        o: {k: record(o, k, {d: v + shift[o] for d, v in base_nll(k).items()}) for k in (0, 1, 2)}
        for o in bench.OTHERS
    }
    del theirs["compressive"][2]  # seed 2 lacks a model: it cannot be paired
    theirs["infinite"][0]["machine"] = {"cpu_model": "another"}
    ours = {bench.NAME: {k: record(bench.NAME, k, base_nll(k)) for k in (0, 1, 2)}}
    ours["infinite"] = {0: theirs["infinite"][0]}  # a re-run that reproduces its committed record
    out = bench.summarize(ours, theirs)
    assert out["seeds"] == [0, 1] and out["documents"] == sorted(PLAYS)
    for p in out["pairs"]:
        assert p["mean_diff"] == pytest.approx(-shift[p["b"]], abs=1e-12)
        assert p["ci95"][1] < 0 and p["verdict"] == f"{bench.NAME} better" and p["seeds_won"] == 2
    (same,) = out["pairs_rerun"]
    assert (same["b"], same["seeds"], same["mean_diff"]) == (
        "infinite",
        [0],
        pytest.approx(-shift["infinite"]),
    )
    (rep,) = out["fairness"]["reproduction"]
    assert (
        rep["max_abs_nll_diff"] == 0
        and rep["same_plays_and_tokens"]
        and out["fairness"]["same_tokens_per_play"]
    )
    assert out["models"][bench.NAME]["test_ppl"] == pytest.approx(
        sum(ours[bench.NAME][k]["test_ppl"] for k in (0, 1)) / 2
    )


def test_reproduction_reports_how_far_a_rerun_lands_and_a_change_of_tokens(bench):
    committed = {"infinite": {0: record("infinite", 0, base_nll(0))}}
    moved = {d: v + (0.02 if d == "lear" else 0.0) for d, v in base_nll(0).items()}
    retokenized = {**PLAYS, "lear": 901}
    (same_tokens,) = bench.reproduction({"infinite": {0: record("infinite", 0, moved)}}, committed)
    assert same_tokens["max_abs_nll_diff"] == pytest.approx(0.02) and same_tokens["same_plays_and_tokens"]
    assert same_tokens["nll_diff_per_play"]["much_ado"] == pytest.approx(0.0, abs=1e-12)
    (other,) = bench.reproduction({"infinite": {0: record("infinite", 0, moved, retokenized)}}, committed)
    assert not other["same_plays_and_tokens"]


def test_summary_refuses_records_of_other_plays(bench):
    theirs = {o: {0: record(o, 0, base_nll(0))} for o in bench.OTHERS}
    theirs["xl_stm"][0] = record(
        "xl_stm", 0, {"lear": 3.0, "much_ado": 3.0, "hamlet": 3.0}, {**PLAYS, "hamlet": 5}
    )
    with pytest.raises(SystemExit, match="xl_stm seed 0 was tested on other plays"):
        bench.summarize({bench.NAME: {0: record(bench.NAME, 0, base_nll(0))}}, theirs)


def test_report_renders_every_model_pair_and_rerun(bench, tmp_path, monkeypatch):
    from infinite_former.utils import write_json

    report = load_benchmark("report")
    theirs = {
        o: {k: record(o, k, {d: v + 0.05 for d, v in base_nll(k).items()}) for k in (0, 1)}
        for o in bench.OTHERS
    }
    ours = {
        bench.NAME: {k: record(bench.NAME, k, base_nll(k)) for k in (0, 1)},
        "infinite": {1: theirs["infinite"][1]},
    }
    write_json(tmp_path / "lm_reach_cpu.json", bench.summarize(ours, theirs))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = report.lm_reach()
    better = "| **∞-former, uniform_time + auto widths better** |"
    rows = [line for line in text.splitlines() if line.endswith(better)]
    assert len(rows) == len(bench.OTHERS) + 1  # every committed model, and the re-run ∞-former
    assert sum("| [1] | -0.0500 [-0.0500, -0.0500] | 1/1 |" in r for r in rows) == 1
    assert "| ∞-former | 1 | " in text and "| 0.0e+00 |" in text  # the re-run reproduces its record
