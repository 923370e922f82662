"""README's examples run as written (issue 15): each block marked ``<!-- example: NAME -->``.

Each runs as a script in a fresh interpreter (``__name__ == "__main__"``, so
multiprocessing's spawn works), on the backend this test run uses, and must
exit 0; the rings it makes must be gone afterwards (they use
``unlink_on_exit``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import child_env
from test_bridge_nats import nats_server  # noqa: F401 - the fixture, for the NATS example

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_BLOCK = re.compile(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)


def _examples() -> dict[str, str]:
    with open(README) as f:
        return dict(_BLOCK.findall(f.read()))


def test_the_readme_marks_its_examples() -> None:
    assert {"numpy", "worker-pool", "nats-bridge"} <= _examples().keys()


@pytest.fixture
def example_env(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str]
) -> Iterator[dict[str, str]]:
    """The example's environment; the NATS example also gets a nats-server (NATS_URL)."""
    if request.node.callspec.params["name"] != "nats-bridge":
        yield child_env()
        return
    server = request.getfixturevalue("nats_server")
    yield child_env(NATS_URL=f"nats://127.0.0.1:{server.port}")


@pytest.mark.parametrize("name", sorted(_examples()))
def test_a_readme_example_runs_as_written(
    name: str, tmp_path: os.PathLike[str], example_env: dict[str, str]
) -> None:
    script = os.path.join(tmp_path, f"readme_{name.replace('-', '_')}.py")  # not numpy.py
    with open(script, "w") as f:
        f.write(_examples()[name])
    before = set(os.listdir("/dev/shm"))
    try:
        done = subprocess.run(
            [sys.executable, script],
            check=False,
            env=example_env,
            capture_output=True,
            text=True,
            timeout=120,  # each runs in seconds
        )
    except subprocess.TimeoutExpired as exc:
        # What the example and its children said is the one clue to a hang: show it whole.
        said = [
            x.decode(errors="replace") if isinstance(x, bytes) else x or ""
            for x in (exc.stdout, exc.stderr)
        ]
        pytest.fail(f"example {name!r} hung; its output:\n" + "\n".join(said))
    assert done.returncode == 0, done.stdout + done.stderr
    made = {
        e
        for e in set(os.listdir("/dev/shm")) - before
        if any(k in e for k in ("pool.", "frames", "ticks.", "orders.", "arrived."))
    }
    assert not made, f"the example left {made} in /dev/shm"
