"""mkdocs hooks (mkdocs.yml `hooks:`): pages and files made at build time, so they cannot drift.

- `cli.md`: the `--help` of every `infinite-former` command, rendered from the argparse parsers.
- the figures under `results/`: the pages link them as `../results/NAME.png` (so they also show on
  GitHub); here they are served as `figures/NAME.png` and the links are rewritten to match.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
WIDTH = "100"  # argparse wraps help at $COLUMNS


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """(`infinite-former lm train`, its parser) for every command and subcommand, depth first."""
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{prefix} {name}")
    return found


def render_cli() -> str:
    """Markdown for the CLI reference: one section per command with its `--help`."""
    sys.path.insert(0, str(ROOT / "src"))
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR")}
    os.environ.update(COLUMNS=WIDTH, NO_COLOR="1")  # fixed width; no ANSI colours (Python ≥ 3.14)
    try:
        from infinite_former.cli import build_parser

        commands = _commands(build_parser(), "infinite-former")
        lines = [
            "# CLI reference",
            "",
            "Generated from the argparse parsers each time the site is built (`docs/hooks.py`), so it",
            "cannot drift from the code; `infinite-former COMMAND --help` prints the same.",
            "",
        ]
        for name, parser in commands:
            lines += [f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
        return "\n".join(lines)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "cli.md", content=render_cli()))
    for png in sorted((ROOT / "results").rglob("*.png")):
        rel = png.relative_to(ROOT / "results").as_posix()
        files.append(File.generated(config, f"figures/{rel}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace("](../results/", "](figures/")
