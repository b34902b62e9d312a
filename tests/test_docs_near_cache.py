"""The near-cache guide's programs run against a real Redis, as they are written.

``tests/test_docs.py`` cannot run them (they need a server, so they are marked
``<!-- not-run -->``). Here each is found in ``docs/howto/near-cache.md`` by its title, pointed
at the suite's Redis and given a key prefix of its own (the only two edits), and run in a
fresh interpreter, as ``test_docs`` runs the others: so the guide's example cannot rot.

One line is added in front: ``configure()`` waits until the near cache's tracking
connection is up. It comes up in a few milliseconds, long before the example's second read
in practice, but a loaded CI machine must not make the test depend on that race.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from pathlib import Path

import pytest

from tests import servers
from tests.helpers import NOT_RUN, TIMEOUT, Block, parse_blocks, run_block

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "howto" / "near-cache.md"

#: The Redis URL and the key prefix the examples are written with.
DOC_URL = "redis://localhost:6379/0"
DOC_PREFIX = 'key_prefix="myapp"'

#: Run before the example: configure() returns once the tracking connection is up.
PRELUDE = """\
import time as _time

from sqlmodel_cache import SQLModelCache as _Cache, _state


def _configure_then_wait(cls, *args, _configure=_Cache.configure.__func__, **kwargs):
    _configure(cls, *args, **kwargs)
    near = _state.runtime.driver.near
    deadline = _time.monotonic() + 10
    while near is not None and not near.tracker.live:
        assert _time.monotonic() < deadline, "the tracking connection did not come up"
        _time.sleep(0.005)


_Cache.configure = classmethod(_configure_then_wait)
"""


def example(title: str) -> Block:
    """The ```python block of the guide whose fence carries ``title="<title>"``."""
    fence = f'```python title="{title}"'
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    numbers = [number for number, line in enumerate(lines, 1) if line.strip() == fence]
    assert len(numbers) == 1, f"{fence!r} found {len(numbers)} times in {GUIDE.name}"
    (block,) = [block for block in parse_blocks(GUIDE) if block.line == numbers[0]]
    assert block.marker == NOT_RUN, "test_docs would run it without a Redis"
    return block


def pointed_at(code: str, url: str, prefix: str) -> str:
    """``code`` with the documented URL and key prefix replaced (each must occur once)."""
    for old in (DOC_URL, DOC_PREFIX):
        assert code.count(old) == 1, f"the example should contain {old!r} exactly once"
    return code.replace(DOC_URL, url).replace(DOC_PREFIX, f'key_prefix="{prefix}"')


@pytest.mark.parametrize(
    "title", ["A near cache in front of Redis", "A near cache with AsyncSession"]
)
def test_guide_example_runs(title: str, redis_server: servers.RedisServer, tmp_path: Path) -> None:
    """The example exits with status 0, so every assert in it held against a real Redis:
    a get served from the near cache (``l1_hits``, no SQL), and a commit in the same
    process removing the entry it served."""
    block = example(title)
    prefix = f"d{uuid.uuid4().hex[:12]}"
    code = PRELUDE + pointed_at(block.code, redis_server.url, prefix)
    try:
        result = run_block(dataclasses.replace(block, code=code), tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: still running after {TIMEOUT} s")
    offset = PRELUDE.count("\n")
    if result.returncode != 0:
        pytest.fail(
            f"{block.id} exited with status {result.returncode} (traceback line "
            f"{offset + 1} is line {block.line + 1} of {GUIDE.name})\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )


def test_cluster_example_runs(redis_cluster: servers.RedisCluster, tmp_path: Path) -> None:
    """The cluster example, against the suite's 3-primary cluster."""
    block = example("A near cache in front of Redis Cluster")
    prefix = f"d{uuid.uuid4().hex[:12]}"
    code = PRELUDE + pointed_at(block.code, redis_cluster.url, prefix)
    result = run_block(dataclasses.replace(block, code=code), tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
