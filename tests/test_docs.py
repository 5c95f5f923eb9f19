"""The documentation stays true: README.md, CHANGELOG.md and docs/*.md.

- every relative link (and image) resolves to a file or folder of the repository, and every
  ``#anchor`` to a heading of the page it names;
- every ``pyro-implicit ...`` command quoted in a fenced code block (and every
  ``-m pyro_implicit.inference ...`` one, as torchrun runs it) parses with the real CLI parser;
- every Python block marked runnable (``<!-- runnable -->`` on the line before its fence) runs
  in a fresh interpreter in a temporary folder, on the tiny data it makes itself (marked
  ``slow``: ``pytest -m "not slow"`` skips it);
- the README stays short and links every page of docs/; docs/layout.md names every module.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
README_LIMIT = 10 * 1024  # bytes: a five-minute read
ENTRY_MODULE = "pyro_implicit.inference"  # torchrun -m pyro_implicit.inference train ARGS
LAYOUT_FOLDERS = ("pyro_implicit", "pyro_implicit/analysis", "models", "inference")

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([^`\s]*)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).+?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SHELL_OPERATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    """A fenced code block: its page, first line number (1-based), info string and text."""

    page: Path
    line: int
    lang: str
    text: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def split_page(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced code blocks of a markdown page and its other lines (numbered)."""
    blocks, prose = [], []
    lines = path.read_text().splitlines()
    fence, start, lang, body, marked = None, 0, "", [], False
    previous = ""
    for number, line in enumerate(lines, start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, start, lang, body = match.group(1), number, match.group(2).lower(), []
                marked = previous.strip() == RUNNABLE
            else:
                prose.append((number, line))
                if line.strip():
                    previous = line
        elif match and match.group(1).startswith(fence) and not match.group(2):
            blocks.append(Block(path, start, lang, "\n".join(body) + "\n", marked))
            fence, previous = None, ""
        else:
            body.append(line)
    assert fence is None, f"{path.relative_to(ROOT)}:{start}: unclosed code fence"
    return blocks, prose


def blocks_of(pages=PAGES) -> list[Block]:
    return [block for page in pages for block in split_page(page)[0]]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: code and emphasis marks and punctuation dropped,
    lowercase, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").replace("*", "").lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page (a repeated heading gets -1, -2, ... as on GitHub)."""
    found, counts = set(), {}
    for _, line in split_page(path)[1]:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = counts.get(base, 0)
            counts[base] = count + 1
            found.add(f"{base}-{count}" if count else base)
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link and image outside code."""
    found = []
    for number, line in split_page(path)[1]:
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def test_every_page_is_checked():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "CHANGELOG.md", "docs/method.md", "docs/cli.md",
            "docs/results.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"line {number}: {target} (no such file)")
            continue
        if not dest.is_relative_to(ROOT):
            broken.append(f"line {number}: {target} (outside the repository)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"line {number}: {target} (no heading #{anchor} in "
                          f"{dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def shell_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, tokens) of every simple command of a shell block: continuation lines joined,
    comments dropped, ``&&``/``||``/``;``/``|`` lists split."""
    logical, first, parts = [], None, []
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        first = number if first is None else first
        parts.append(line[:-1] if line.endswith("\\") else line)
        if not line.endswith("\\"):
            logical.append((first, " ".join(parts)))
            first, parts = None, []
    commands = []
    for number, line in logical:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as err:
            pytest.fail(f"{block.page.relative_to(ROOT)}:{number}: cannot split {line!r}: {err}")
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token in SHELL_OPERATORS:
                if current:
                    commands.append((number, current))
                current = []
            else:
                current.append(token)
    return commands


def cli_argv(tokens: list[str]) -> list[str] | None:
    """The arguments ``pyro-implicit`` would get from one simple command, or None when the
    command does not run it (``.venv/bin/pyro-implicit ARGS``, ``torchrun ... -m
    pyro_implicit.inference ARGS``, ``python -m pyro_implicit.inference ARGS``)."""
    if Path(tokens[0]).name == "pyro-implicit":
        return tokens[1:]
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[i + 1].startswith("pyro_implicit"):
            module = tokens[i + 1]
            assert module == ENTRY_MODULE, (
                f"{shlex.join(tokens)}: the command line's module entry point is -m "
                f"{ENTRY_MODULE}, not -m {module}")
            return tokens[i + 2:]
    return None


def quoted_commands() -> list[tuple[str, list[str]]]:
    found = []
    for block in blocks_of():
        if block.lang in ("python", "py", "pycon", "json", "text"):
            continue
        for number, tokens in shell_commands(block):
            argv = cli_argv(tokens)
            if argv is not None:
                found.append((f"{block.page.relative_to(ROOT)}:{number}", argv))
    return found


COMMANDS = quoted_commands()


def test_docs_quote_commands():
    assert len(COMMANDS) >= 20, COMMANDS  # the parser would notice nothing if none were found
    assert any(argv[:1] == ["demo"] for _, argv in COMMANDS)


@pytest.mark.parametrize("where, argv", COMMANDS,
                         ids=[f"{w} {' '.join(a[:2])}" for w, a in COMMANDS])
def test_quoted_command_parses(where, argv):
    from pyro_implicit.inference.cli import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse exits instead of raising
        pytest.fail(f"{where}: `pyro-implicit {shlex.join(argv)}` does not parse "
                    f"(exit {stop.code}): {errors.getvalue().strip().splitlines()[-1:]}")


def runnable_blocks() -> list[Block]:
    return [block for block in blocks_of() if block.runnable]


def test_runnable_markers_mark_python_blocks():
    marked = runnable_blocks()
    assert all(block.lang == "python" for block in marked), [b.where for b in marked]
    assert any(block.page == README for block in marked), "the README's snippet must run"
    for page in PAGES:  # a marker must sit right above a fence, or it marks nothing
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip() == RUNNABLE:
                following = next((t for t in lines[number:] if t.strip()), "")
                assert FENCE.match(following), f"{page.relative_to(ROOT)}:{number}: " \
                                               f"{RUNNABLE} is not followed by a code fence"


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.where)
def test_runnable_snippet_runs(block, tmp_path):
    env = {**os.environ, "PYRO_IMPLICIT_NO_NATIVE": "1", "MPLBACKEND": "Agg"}
    script = tmp_path / "snippet.py"
    script.write_text(block.text)
    # no deadline: how long a snippet takes depends on the machine, not on its correctness
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where}: the snippet failed:\n{done.stderr[-4000:]}"


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/"


def test_readme_links_every_docs_page():
    targets = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in targets]
    assert not missing, f"README.md does not link docs/{missing}"


LAYOUT = ROOT / "docs" / "layout.md"


def layout_bullets() -> dict[str, str]:
    """docs/layout.md's top-level bullets, by the folder each one starts with."""
    text = LAYOUT.read_text().split("\n- ", 1)[1]
    text = "- " + text
    bullets: dict[str, str] = {}
    for item in re.split(r"\n(?=- )", "\n" + text.strip()):
        match = re.match(r"\s*- `([^`]+)/`", item)
        if match:
            bullets[match.group(1)] = item
    return bullets


def test_layout_page_names_every_module():
    bullets = layout_bullets()
    missing = []
    for folder in LAYOUT_FOLDERS:
        assert folder in bullets, f"Layout has no bullet for {folder}/"
        for path in sorted((ROOT / folder).glob("*.py")):
            if f"`{path.name}`" not in bullets[folder]:
                missing.append(f"{folder}/{path.name}")
    assert not missing, f"docs/layout.md does not name {missing}"
    section = "\n".join(bullets.values())
    for folder in ("notebooks", "tests", "benchmarks", "docs"):
        assert f"`{folder}/`" in section, f"docs/layout.md does not name {folder}/"
