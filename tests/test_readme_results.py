"""The results tables of the docs (docs/results.md) are rendered from the committed results/*.json files."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PAGE = ROOT / "docs" / "results.md"


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_file_has_a_table_in_the_docs():
    report = _report()
    text = RESULTS_PAGE.read_text(encoding="utf-8")
    assert set(report.blocks_in(text)) == set(report.RENDERERS)


def test_docs_tables_match_the_results_files():
    report = _report()
    text = RESULTS_PAGE.read_text(encoding="utf-8")
    assert report.render_results(text) == text, "run: python benchmarks/report.py"


def test_the_check_catches_an_edited_number():
    report = _report()
    text = RESULTS_PAGE.read_text(encoding="utf-8")
    name = report.blocks_in(text)[0]
    start = text.index(f"<!-- results:{name}:start -->")
    edited = text[:start] + text[start:].replace("|", "| 0", 1)
    assert report.render_results(edited) != edited


def test_the_readme_holds_no_results_table():
    """Numbers live in one place: the README summarises and links to docs/results.md."""
    report = _report()
    assert report.blocks_in((ROOT / "README.md").read_text(encoding="utf-8")) == []
