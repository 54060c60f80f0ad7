"""Results files are portable: no absolute paths of the machine that wrote them."""

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
