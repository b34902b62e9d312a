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

import subprocess
from pathlib import Path

import pytest

from tests.helpers import NOT_RUN, ROOT, TIMEOUT, Block, parse_blocks, run_block


def _markdown_files() -> list[Path]:
    files = sorted((ROOT / "docs").rglob("*.md"))
    readme = ROOT / "README.md"
    if readme.exists():
        files.append(readme)
    return files


def _python_blocks() -> list[Block]:
    return [
        block
        for path in _markdown_files()
        for block in parse_blocks(path)
        if block.language in {"python", "py", "python3"}
    ]


PYTHON_BLOCKS = _python_blocks()
RUNNABLE = [block for block in PYTHON_BLOCKS if block.marker != NOT_RUN]


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
        result = run_block(block, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: still running after {TIMEOUT} s")
    if result.returncode != 0:
        pytest.fail(
            f"{block.id} exited with status {result.returncode} "
            f"(traceback line 1 is line {block.line + 1} of {block.path.name})\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
