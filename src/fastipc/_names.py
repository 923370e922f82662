"""Ring names and the /dev/shm paths of every object a ring makes.

The one place that spells them: the backends, ``fastipc ls``/``rm`` and the
tests all ask here. Opening a segment by name lives here too, so that the
rules for trusting a name (no symlinks, owner check) are written once.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from .errors import IncompatibleSegment

__all__ = [
    "BELL_PREFIX",
    "BELL_SUFFIXES",
    "SEGMENT_PREFIX",
    "SEMAPHORE_PREFIX",
    "SEMAPHORE_SUFFIXES",
    "SHM_DIR",
    "bell_paths",
    "incompatible",
    "open_bell",
    "open_segment",
    "segment_path",
    "semaphore_names",
    "semaphore_paths",
    "subscriber_bell_path",
    "subscriber_bells",
    "unlink_ring",
    "validate_name",
]

#: Where POSIX shared memory and named semaphores live on Linux.
SHM_DIR = "/dev/shm"
#: A ring's segment is ``SHM_DIR/SEGMENT_PREFIX + name``.
SEGMENT_PREFIX = "fastipc."
#: The python ring's semaphores are ``SHM_DIR/SEMAPHORE_PREFIX + name + suffix``.
SEMAPHORE_PREFIX = "sem.fastipc."
#: Two wake-up hints (``.items``, ``.space``), then the producers' and the
#: consumers' mutexes (``.prod``, ``.cons``).
SEMAPHORE_SUFFIXES = (".items", ".space", ".prod", ".cons")
#: A ring's readiness doorbells (FIFOs, both backends) are
#: ``SHM_DIR/BELL_PREFIX + name + suffix``: ``.recv`` is rung when a message
#: is published, ``.send`` when room is freed (see ``open_bell``).
BELL_PREFIX = "bell.fastipc."
BELL_SUFFIXES = (".recv", ".send")
#: A broadcast ring's subscriber slot N has its own doorbell FIFO,
#: ``SHM_DIR/BELL_PREFIX + name + SUB_BELL_INFIX + N`` (both backends).
SUB_BELL_INFIX = ".sub"

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid ring name, else raise TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid ring name {name!r}: use 1-200 characters of A-Z a-z 0-9 . _ - (no slash)"
        )
    if name in (".", ".."):
        raise ValueError(f"invalid ring name {name!r}")
    return name


def segment_path(name: str) -> str:
    """The /dev/shm path of ring ``name``'s segment."""
    return f"{SHM_DIR}/{SEGMENT_PREFIX}{name}"


def semaphore_names(name: str) -> list[str]:
    """The POSIX names (for ``posix_ipc.Semaphore``) of the python ring's semaphores, in
    ``SEMAPHORE_SUFFIXES`` order."""
    return [f"/fastipc.{name}{s}" for s in SEMAPHORE_SUFFIXES]


def semaphore_paths(name: str) -> list[str]:
    """The /dev/shm paths of the named semaphores a ring may own (python backend)."""
    return [f"{SHM_DIR}/{SEMAPHORE_PREFIX}{name}{s}" for s in SEMAPHORE_SUFFIXES]


def bell_paths(name: str) -> list[str]:
    """The /dev/shm paths of ring ``name``'s two doorbell FIFOs: recv side, send side."""
    return [f"{SHM_DIR}/{BELL_PREFIX}{name}{s}" for s in BELL_SUFFIXES]


def subscriber_bell_path(name: str, slot: int) -> str:
    """The /dev/shm path of broadcast ring ``name``'s doorbell FIFO for subscriber slot ``slot``."""
    return f"{SHM_DIR}/{BELL_PREFIX}{name}{SUB_BELL_INFIX}{slot}"


def subscriber_bells(name: str) -> list[str]:
    """The subscriber doorbell FIFOs of broadcast ring ``name`` that exist now."""
    pattern = re.compile(re.escape(f"{BELL_PREFIX}{name}{SUB_BELL_INFIX}") + r"[0-9]{1,4}")
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(f"{SHM_DIR}/{e}" for e in entries if pattern.fullmatch(e))


def open_bell(
    name: str,
    side: int,
    mode: int | None = None,
    owners: frozenset[int] | None = None,
    path: str | None = None,
    make: bool = True,
) -> int:
    """Open ring ``name``'s doorbell FIFO of ``side`` (0 recv, 1 send), making it if missing.

    Returns an fd opened ``O_RDWR | O_NONBLOCK | O_CLOEXEC``: read-write so
    it never reads EOF nor writes EPIPE whoever else has it open, and
    non-blocking so ringing a full bell or draining an empty one never waits.
    A missing FIFO is made with ``mode`` (default 0600; the ring's own mode
    when the backend knows it), never following a symlink; an existing one
    must be a FIFO owned by a uid in ``owners`` (default: this user or root,
    as for ``open_segment``; else PermissionError, or
    ``IncompatibleSegment`` for something that is not a FIFO), as a bell
    another user made could be rung or drained by them. ``path`` (e.g. a
    ``subscriber_bell_path``) replaces the ring's ``side`` bell. With
    ``make=False`` a missing FIFO raises FileNotFoundError instead.

    Call it only while the ring is known to be at its name: when a handle
    opens the ring (or a subscriber takes its slot). A handle keeps the fds
    and duplicates them for readiness (``fileno()``, aio): opened later, by
    path, a bell could be one made again after the ring was removed (litter
    that a ring made anew under the name would adopt), or another ring's.
    """
    if path is None:
        path = bell_paths(name)[side]
    made = False
    if make:
        try:
            os.mkfifo(path, 0o600 if mode is None else mode)
            made = True
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link, not a ring doorbell; not following it", path
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            raise IncompatibleSegment(f"{path}: not a FIFO, so not a fastipc ring doorbell")
        allowed = owners if owners is not None else frozenset((os.geteuid(), 0))
        if st.st_uid not in allowed and st.st_uid != os.geteuid():
            raise PermissionError(
                errno.EPERM, f"owned by uid {st.st_uid}, not by this user: refusing it", path
            )
        if made and mode is not None:
            os.fchmod(fd, mode)  # exactly `mode`: mkfifo applied the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlink_ring(name: str) -> None:
    """Remove ring ``name``'s segment, semaphores and doorbells (a broadcast ring's
    subscriber bells included); open handles keep working.

    Raises ValueError/TypeError for a bad name, FileNotFoundError if nothing
    of that name exists. ``os.unlink`` never follows a symlink at the name.
    """
    validate_name(name)
    found = False
    for path in [segment_path(name), *semaphore_paths(name)]:
        try:
            os.unlink(path)
            found = True
        except FileNotFoundError:
            pass
    for path in [*bell_paths(name), *subscriber_bells(name)]:  # not evidence of a ring
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if not found:
        raise FileNotFoundError(errno.ENOENT, "no such ring", segment_path(name))


def open_segment(name: str, owners: frozenset[int] | None = None) -> int:
    """Open ring ``name``'s segment read-write; return the fd (close-on-exec).

    Never follows a symlink (a name squatted by a link raises OSError(ELOOP)),
    and refuses a segment that is not a regular file or whose owner is not in
    ``owners`` (default: this process's effective uid, or root) with
    PermissionError naming the owner: another user could otherwise create
    the name first and read or forge what is sent through it.
    """
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link, not a ring segment; not following it", path
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise incompatible(name, "not a regular file")
        allowed = owners if owners is not None else frozenset((os.geteuid(), 0))
        if st.st_uid not in allowed:
            raise PermissionError(
                errno.EPERM,
                f"owned by uid {st.st_uid}, not by this user: refusing a segment another user "
                f"made (pass owners={{{st.st_uid}}} to Ring.open to trust it)",
                path,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def incompatible(name: str, why: str) -> IncompatibleSegment:
    """The error for a segment that is not a usable fastipc ring."""
    return IncompatibleSegment(f"{segment_path(name)}: {why}")
