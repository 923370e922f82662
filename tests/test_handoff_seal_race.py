"""A sender that shrinks and seals its hand-off area while the receiver checks it (issue 10, defect 8).

The receiver must read an area's seals before its size: once F_SEAL_SHRINK
is seen the size can only stay, but a size read first may be gone by the time
the seals are, and mapping it gives SIGBUS on the first read past the new end.
The window is a few instructions wide, so an LD_PRELOAD shim
(tests/shims/pause_on_memfd.c) stops the receiving process right after each
of ``fstat`` and ``fcntl(F_GET_SEALS)`` on the test's memfd, and the test,
as the hostile sender, shrinks and seals the area right after the first of
them. Read in the right order, the seals were missing: a protocol error.
Read size first, the receiver died of SIGBUS (both backends did). The receiver is a real process with its own Channel;
nothing of the OS is simulated.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import textwrap

import pytest
from _cpeers import _compiler
from conftest import TESTS_DIR
from test_channel_handoff_wire import AREA, AREA_HEADER, AREA_MAGIC, BULK, FDS, desc, frame

SHIM_SRC = os.path.join(TESTS_DIR, "shims", "pause_on_memfd.c")
RACE_AREA = "fipc-seal-race"
DATA = 1 << 20
OFFSET = DATA // 2

RECEIVER = textwrap.dedent(
    """
    import socket, sys
    import fastipc
    ch = fastipc.Channel.from_socket(socket.socket(fileno=int(sys.argv[1])), max_message=1 << 20)
    try:
        msg = ch.recv(timeout=20)
        print("message", len(msg), msg[:4].hex(), flush=True)
    except OSError as e:
        print("error", type(e).__name__, e.errno, flush=True)
    """
)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("shim") / "pause_on_memfd.so")
    cmd = [*_compiler(), "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out, SHIM_SRC, "-ldl"]
    built = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return out


def unsealed_area() -> int:
    fd = os.memfd_create(RACE_AREA, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, AREA_HEADER + DATA)
    os.pwrite(fd, AREA_MAGIC.to_bytes(8, "little"), 0)
    os.pwrite(fd, b"\xab" * 64, AREA_HEADER + OFFSET)
    return fd


def test_shrinking_and_sealing_the_area_mid_check_never_faults_the_receiver(shim: str) -> None:
    mine, theirs = socket.socketpair()
    to_test_r, to_test_w = os.pipe()
    to_recv_r, to_recv_w = os.pipe()
    env = dict(
        os.environ,
        # After what is preloaded already (the sanitizer run's ASan must stay first).
        LD_PRELOAD=f"{os.environ.get('LD_PRELOAD', '')} {shim}".strip(),
        PAUSE_MEMFD=f"/memfd:{RACE_AREA}",
        PAUSE_W=str(to_test_w),
        PAUSE_R=str(to_recv_r),
    )
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(theirs.fileno())],
        pass_fds=[theirs.fileno(), to_test_w, to_recv_r],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    os.close(to_test_w)
    os.close(to_recv_r)
    area = unsealed_area()
    try:
        msg = frame(desc(OFFSET, 0), BULK | AREA | FDS, length=64)
        socket.send_fds(mine, [msg], [area])
        shrunk = False
        while True:
            ready, _, _ = select.select([to_test_r], [], [], 20)
            assert ready, "the receiver neither paused nor finished"
            if not os.read(to_test_r, 1):
                break  # the receiver exited
            if not shrunk:  # right after its first look at the area, whichever call that is
                os.ftruncate(area, AREA_HEADER + 4096)
                fcntl.fcntl(area, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
                shrunk = True
            try:
                os.write(to_recv_w, b"g")
            except BrokenPipeError:
                break  # the receiver died between its pause and this
        out, err = child.communicate(timeout=20)
    finally:
        os.close(area)
        os.close(to_test_r)
        os.close(to_recv_w)
        mine.close()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, f"receiver died with {child.returncode}: {err}"
    assert shrunk, f"the receiver never looked at the area: {out} {err}"
    # It saw the area unsealed (seals read first) or, sealed and shrunk, out of reach of the descriptor.
    assert out.startswith("error ProtocolError"), out
