"""`infinite-former sort` runs on an install without the Hugging Face extra: the CLI imports only
the command it runs (issue 16), and nothing on the sort path imports transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_cli import TINY

HF_EXTRA = ("transformers", "tokenizers", "datasets", "peft")


def _without_hf_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing the HF extra's packages fails, in spawned workers too:
    a folder first on PYTHONPATH holds packages of those names that raise ImportError."""
    blocked = tmp_path / "blocked"
    for name in HF_EXTRA:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (test)')\n")
    src = Path(__file__).resolve().parents[1] / "src"
    path = [str(blocked), str(src), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def test_sort_runs_without_transformers(tmp_path):
    env = _without_hf_extra(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "import transformers"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "not installed (test)" in probe.stderr  # the block works
    cmd = [sys.executable, "-m", "infinite_former.cli", "sort", *TINY, "--out", str(tmp_path), "--name", "t"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert set(results["accuracy"]) == {"infinite_sticky", "xl"}  # both models trained (in 2 workers)
    assert (tmp_path / "t" / "accuracy.png").exists()


def test_top_level_help_lists_every_command_without_importing_them(tmp_path):
    env = _without_hf_extra(tmp_path)
    code = (
        "import sys; from infinite_former import cli; cli.build_parser([]).format_help(); "
        "print(sorted(m for m in sys.modules if m.startswith('infinite_former.experiments.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "infinite_former.cli", "--help"], env=env, capture_output=True, text=True
    ).stdout
    assert all(name in help_text for name in ("sort", "lm", "passkey", "dialogue"))
