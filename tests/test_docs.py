"""Every Python example in the docs and the README runs, and does what it asserts.

A ```python block is executed as a complete program in a fresh interpreter
(``python -c``), with a temporary working directory, unless the line just before its
opening fence is one of these markers:

* ``<!-- not-run -->``: a fragment, or a program that needs Redis or a server; not executed.
* ``<!-- pytest -->``: a pytest test module; written to a file and run with pytest.

A fresh interpreter per block means examples cannot leak models, listeners or cache state
into each other (SQLModel's table metadata is process-global), and an example that forgets
an import fails here as it would for a reader.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60

NOT_RUN = "<!-- not-run -->"
PYTEST = "<!-- pytest -->"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    marker: str  # the stripped line before the fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:L{self.line}"


def _markdown_files() -> list[Path]:
    files = sorted((ROOT / "docs").rglob("*.md"))
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    return files


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip(" \t")


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, in order (indented fences included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        words = opening["info"].strip().split()
        language = words[0].lower() if words else ""
        marker = lines[index - 1].strip() if index > 0 else ""
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(_dedent(lines[end], indent))
            end += 1
        blocks.append(Block(path, index + 1, language, marker, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def _python_blocks() -> list[Block]:
    return [
        block
        for path in _markdown_files()
        for block in parse_blocks(path)
        if block.language in {"python", "py", "python3"}
    ]


PYTHON_BLOCKS = _python_blocks()
RUNNABLE = [block for block in PYTHON_BLOCKS if block.marker != NOT_RUN]


def _child_env() -> dict[str, str]:
    """The environment of an example: this checkout first on the path, no outer pytest options."""
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    if block.marker == PYTEST:
        module = cwd / "test_doc_example.py"
        module.write_text(block.code, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name]
    else:
        command = [sys.executable, "-c", block.code]
    return subprocess.run(
        command,
        cwd=cwd,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_docs_have_runnable_examples() -> None:
    """The collector finds the docs' Python examples (guards against a parser regression)."""
    assert len(RUNNABLE) >= 10, [block.id for block in PYTHON_BLOCKS]
    assert {block.path.name for block in RUNNABLE} >= {"index.md", "quickstart.md"}


def test_parser_handles_markers_and_indented_fences(tmp_path: Path) -> None:
    """Markers are read from the line before the fence; indented fences are dedented."""
    page = tmp_path / "page.md"
    page.write_text(
        "intro\n"
        "<!-- not-run -->\n"
        "```python\nfragment()\n```\n\n"
        "!!! note\n"
        "    ```python\n    print('inside')\n    ```\n"
        "```bash\nls\n```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page)
    assert [(b.line, b.language, b.marker, b.code) for b in blocks] == [
        (3, "python", NOT_RUN, "fragment()\n"),
        (8, "python", "!!! note", "print('inside')\n"),
        (11, "bash", "```", "ls\n"),
    ]


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    """The example exits with status 0 in a fresh interpreter, so all its asserts hold."""
    try:
        result = _run(block, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: still running after {TIMEOUT} s")
    if result.returncode != 0:
        pytest.fail(
            f"{block.id} exited with status {result.returncode} "
            f"(traceback line 1 is line {block.line + 1} of {block.path.name})\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
