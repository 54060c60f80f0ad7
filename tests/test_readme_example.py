"""The README's usage example runs as written (it sits between the usage-example markers)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# the docs include the same block (pymdownx.snippets section "usage-example")
START, END = "<!-- --8<-- [start:usage-example] -->", "<!-- --8<-- [end:usage-example] -->"


def usage_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README.md must hold the usage example between {START} and {END}"
    section = text[text.index(START) + len(START) : text.index(END)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one ```python block between the markers, found {len(blocks)}"
    return blocks[0]


def test_readme_usage_example_runs():
    code = usage_example()
    assert "LongTermAttention" in code
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
