"""The documentation in the repository: README.md, CHANGELOG.md, docs/ and deploy/ read well from a fresh clone.

Every relative link resolves to a file of the repository (and a ``#anchor``
to a heading of the linked page, as GitHub makes anchors), the README stays
a few screens long, nothing points outside the repository (``../shared``)
or at internal issue numbers, and the README's two commands exist.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: the README is an entry point, not the manual (the guide is docs/guide/)
README_MAX_BYTES = 12 * 1024
#: the README's two commands (scripts/demo.sh runs the main job, scripts/test.sh the tests)
README_COMMANDS = ("bash scripts/demo.sh", "bash scripts/test.sh")

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
#: ``[text](target)`` and ``![alt](target)``; the target ends at a space (a title) or ")"
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
#: internal issue numbers: "issue 17", "issues 9 and 10", "#12" (not "(#anchor)" or "page.md#1-x")
_ISSUE = re.compile(r"\bissues?\s+#?\d+|(?<![\w(/])#\d+\b", re.I)


def doc_files() -> list[Path]:
    """README.md, CHANGELOG.md and every Markdown file under docs/ and deploy/."""
    return [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "deploy").rglob("*.md"))]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans (where brackets are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of the Markdown file ``path`` (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = anchor(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links of the Markdown file ``path`` that do not resolve, as ``"target: why"``.

    A link resolves when its file (relative to ``path``) exists inside ``root``
    and, with ``#anchor``, the anchor is a heading of the linked Markdown file
    (or of ``path`` itself for ``#anchor`` alone). Absolute URLs are not checked.
    """
    problems = []
    for match in _LINK.finditer(prose(path.read_text(encoding="utf-8"))):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        name, _, fragment = target.partition("#")
        linked = (path.parent / name).resolve() if name else path.resolve()
        if not linked.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not linked.exists():
            problems.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            problems.append(f"{target}: no heading #{fragment} in {linked.name}")
    return problems


# ------------------------------------------------------------------------ the checker itself


def test_the_link_checker_finds_planted_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## 2. Staged levels (`schedule`)\n\ntext\n")
    (tmp_path / "picture.png").write_bytes(b"")
    good = ("[page](docs/page.md) [section](docs/page.md#2-staged-levels-schedule) ![a picture](picture.png) "
            "[here](#top-heading) [web](https://example.org/x) `[not a link](nowhere.md)`\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Top heading\n\n{good}\n```\n[in code](missing.md)\n```\n")
    assert broken_links(readme, tmp_path) == []
    readme.write_text(f"# Top heading\n\n{good}[gone](docs/missing.md) [bad section](docs/page.md#3-nothing) "
                      "[out](../elsewhere/math.md) [no anchor](#nowhere)\n")
    assert broken_links(readme, tmp_path) == [
        "docs/missing.md: no such file",
        "docs/page.md#3-nothing: no heading #3-nothing in page.md",
        "../elsewhere/math.md: outside the repository",
        "#nowhere: no heading #nowhere in README.md",
    ]


def test_anchors_follow_github():
    assert anchor("1. The factorization") == "1-the-factorization"
    assert anchor("The project at 100,000 classes (`benchmarks/project_scale.py`)") == \
        "the-project-at-100000-classes-benchmarksproject_scalepy"
    assert anchor("Streaming new classes: `mmf-stream serve`") == "streaming-new-classes-mmf-stream-serve"


def test_the_issue_pattern_finds_internal_references_only():
    for text in ("Targets from issue 17:", "issues 9 and 10", "see #12", "(Issue 3)"):
        assert _ISSUE.search(text), text
    for text in ("[x](math.md#10-knock-out)", "[y](#4-staged-levels)", "an issue with the queue", "colour #1f77b4"):
        assert not _ISSUE.search(text), text


# ------------------------------------------------------------------------ the repository's docs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_readme_fits_on_a_few_screens():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes (at most {README_MAX_BYTES:,}): move detail to docs/"


def test_docs_stay_inside_the_repository_and_name_no_internal_issues():
    offenders = []
    for path in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "shared/docs" in line or _ISSUE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_readmes_two_commands_exist():
    text = README.read_text(encoding="utf-8")
    for command in README_COMMANDS:
        assert command in text, f"README.md does not give {command!r}"
        script = ROOT / command.split()[1]
        assert script.is_file(), f"{script} is missing"
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_the_guide_has_its_pages():
    guide = ROOT / "docs" / "guide"
    for name in ("index", "factorize", "class-stores", "views", "dask", "service", "deploy"):
        assert (guide / f"{name}.md").is_file(), f"docs/guide/{name}.md is missing"
    linked = {match.group(1) for match in _LINK.finditer(prose((guide / "index.md").read_text(encoding="utf-8")))}
    unlisted = [p.name for p in sorted(guide.glob("*.md")) if p.name != "index.md" and p.name not in linked]
    assert not unlisted, f"docs/guide/index.md does not link {unlisted}"


def test_the_readmes_worked_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    example = re.search(r"^## Worked example\n.*?```python\n(.*?)```", text, re.S | re.M)
    assert example, "README.md has no Python worked example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.group(1), "README.md (worked example)", "exec"), namespace)
    assert namespace["g"].error == namespace["f"].error
    assert (tmp_path / "result.zarr").is_dir() and (tmp_path / "graph.html").is_file()
