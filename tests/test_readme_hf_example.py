"""The README's example for any Hugging Face causal LM runs as written (between the hf-example markers)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
# the docs include the same block (pymdownx.snippets section "hf-example")
START, END = "<!-- --8<-- [start:hf-example] -->", "<!-- --8<-- [end:hf-example] -->"


def hf_example() -> str:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README.md must hold the example between {START} and {END}"
    section = text[text.index(START) + len(START) : text.index(END)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one ```python block between the markers, found {len(blocks)}"
    return blocks[0]


def test_readme_hf_example_runs():
    code = hf_example()
    assert "add_memory" in code
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scope = {"__name__": "readme_hf_example"}
        exec(compile(code, str(README), "exec"), scope)
    finally:
        torch.set_num_threads(threads)
    memory, again = scope["memory"], scope["again"]
    assert memory.ltm_tokens.tolist() == [960, 960] and memory.position == 40
    for a, b in zip(scope["model"].ltm.state_dict().values(), again.ltm.state_dict().values(), strict=True):
        assert torch.equal(a, b)
