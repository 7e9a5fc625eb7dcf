"""README.md is the newcomer's path and docs/ the reference: every relative link in them resolves (file and
heading anchor), and every docs/ page is one click from the README."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> list[str]:
    """The lines a reader sees as text: fenced blocks and lines indented as code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and not line.startswith(("    ", "\t")):
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    return [target for line in prose(text) for target in LINK.findall(re.sub(r"`[^`]*`", "", line))]


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered -1, -2."""
    seen: Counter[str] = Counter()
    ids = set()
    for line in prose(text):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            ids.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return ids


def broken(page: Path) -> list[str]:
    text = page.read_text()
    found = []
    for target in links(text):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            found.append(f"{target}: no such file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            found.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    return found


def test_the_link_reader_sees_prose_links_only():
    text = (
        "# Export: checkpoint -> engines\n## `rynn-edge doctor`\n## Notes\n## Notes\n"
        "See [a](docs/a.md#notes-1) and ![b](../b.png), not `[c](c.md)`.\n"
        "    [d](code.md)\n```\n[e](fenced.md)\n```\n[f](https://example.org)\n"
    )
    assert links(text) == ["docs/a.md#notes-1", "../b.png", "https://example.org"]
    assert anchors(text) == {"export-checkpoint---engines", "rynn-edge-doctor", "notes", "notes-1"}


def test_every_relative_link_resolves():
    problems = {str(page.relative_to(ROOT)): broken(page) for page in PAGES}
    assert not {page: found for page, found in problems.items() if found}
    assert sum(len(links(page.read_text())) for page in PAGES) > 20  # the reader did find the links


def test_every_docs_page_is_one_click_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / target.partition("#")[0]).resolve() for target in links(readme.read_text())}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 9
    assert [p.name for p in pages if p.resolve() not in linked] == []
