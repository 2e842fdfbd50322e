"""Every section the code and the docs cite exists: `docs/architecture.md, "Package layering"`,
`(BENCHMARKS.md, CPU deployment)`, `docs/architecture.md, SFC step 5` name a heading of that file
(the step of a numbered list is not checked, its section is). A renamed heading then fails here,
not in a reader's search."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/*.md", "BENCHMARKS.md", "README.md")
SOURCES = ("csfcn", "jax_csfcn", "torch_deploy", "kernels", "convert", "configs", "tools", "tests", "docs")
# `FILE, "Quoted heading"` or `FILE, Heading words` up to a bracket, comma, colon, or " step".
CITATION = re.compile(
    r"(?P<file>docs/[a-z_]+\.md|BENCHMARKS\.md|README\.md),? "
    r"(?:\"(?P<quoted>[^\"]+)\"|(?P<bare>[A-Z][A-Za-z0-9'/ -]*?)(?= steps? | \(|[),.;:]|$))",
    re.MULTILINE,
)


def _headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]


def citations(root: Path = ROOT) -> list[tuple[str, int, str, str]]:
    """(citing file, line, cited file, cited heading) for every citation under ``root``."""
    files = [p for d in SOURCES for p in (root / d).rglob("*") if p.suffix in (".py", ".md")]
    files += [p for p in (root / "README.md", root / "BENCHMARKS.md") if p.is_file()]
    out = []
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if path.name == "test_doc_references.py":
                break  # this file's own examples
            for m in CITATION.finditer(line):
                name = (m["quoted"] or m["bare"] or "").strip()
                if name:
                    out.append((str(path.relative_to(root)), i, m["file"], name))
    return out


def dangling(root: Path = ROOT) -> list[str]:
    """The citations under ``root`` whose file has no heading that starts with the cited name."""
    out = []
    for where, line, cited, name in citations(root):
        target = root / cited
        headings = _headings(target) if target.is_file() else []
        if not any(h.startswith(name) for h in headings):
            out.append(f"{where}:{line}: {cited}, {name!r}")
    return out


def test_every_cited_section_exists():
    assert len(citations()) > 40  # the pattern still finds the citations the project makes
    missing = dangling()
    assert not missing, "cited sections that do not exist:\n" + "\n".join(missing)


def test_a_renamed_heading_is_caught(tmp_path):
    """The check bites: a citation of a heading that is not there is reported, the right one not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("# Title\n\n## Package layering\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "a.py").write_text('# see docs/x.md, "Package layout"\n# and (docs/x.md, Package layering)\n')
    assert [c[2:] for c in citations(tmp_path)] == [("docs/x.md", "Package layout"), ("docs/x.md", "Package layering")]
    assert dangling(tmp_path) == ["tests/a.py:1: docs/x.md, 'Package layout'"]
