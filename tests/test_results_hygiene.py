"""Results files are portable (no absolute paths of the machine that wrote them) and every comparison
of models in them gives each model's parameter count."""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield k
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def test_no_results_file_holds_an_absolute_path():
    files = sorted(RESULTS.rglob("*.json"))
    assert files
    for path in files:
        bad = [s for s in _strings(json.loads(path.read_text())) if s.startswith(("/", "~")) or ":\\" in s]
        assert not bad, f"{path.name} holds absolute paths: {bad[:3]}"


def _model_tables(x, where=""):
    """Every table of models in a results file: a ``models`` mapping of model name -> its numbers,
    and a ``runs`` mapping whose runs name their model (``model`` or ``memory_type``)."""
    if isinstance(x, dict):
        for k, v in x.items():
            if (
                k in ("models", "runs")
                and isinstance(v, dict)
                and all(isinstance(m, dict) for m in v.values())
            ):
                if k == "models":
                    yield f"{where}/models", v
                elif len({r.get("model", r.get("memory_type")) for r in v.values()} - {None}) > 1:
                    yield f"{where}/runs", v
            yield from _model_tables(v, f"{where}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _model_tables(v, f"{where}[{i}]")


def _parameter_count(numbers: dict) -> int | None:
    """num_parameters (an int, or {"total", "base", "memory"}) or the older key "parameters"."""
    n = numbers.get("num_parameters", numbers.get("parameters"))
    if isinstance(n, dict):
        if set(n) != {"total", "base", "memory"} or n["total"] != n["base"] + n["memory"]:
            return None
        n = n["total"]
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def test_every_comparison_of_models_gives_each_ones_parameter_count():
    """A reader must be able to tell memory from capacity: where a results file compares models,
    each gives its parameter count (split into base and memory where a memory adds weights)."""
    tables = [(path, where, models) for path in sorted(RESULTS.rglob("*.json"))
              for where, models in _model_tables(json.loads(path.read_text()))]  # fmt: skip
    compared = [(p.relative_to(RESULTS), w, m) for p, w, m in tables if len(m) > 1]
    # dialogue, gpt2_finetune, lm_shakespeare (4 files, 2 conventions), sorting (4 files)
    assert len(compared) >= 12, [f"{p}{w}" for p, w, _ in compared]
    missing = [
        (str(p), w, name)
        for p, w, models in compared
        for name, m in models.items()
        if _parameter_count(m) is None
    ]
    assert not missing, f"models without a parameter count: {missing[:5]}"
