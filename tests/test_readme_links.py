"""The README's links into docs/ (and to the changelog) point at files and headings that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub (and the docs site's slugify) give the headings: lower case, punctuation
    dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)(?:#([^)]*))?\)", readme)
    assert len(links) > 10
    for path, anchor in links:
        target = ROOT / path
        assert target.is_file(), f"README links to {path}, which does not exist"
        if anchor:
            anchors = github_anchors(target.read_text(encoding="utf-8"))
            assert anchor in anchors, f"README links to {path}#{anchor}; its headings give {sorted(anchors)}"
