"""Python objects as messages: pickle protocol 5 with out-of-band buffers (PEP 574).

One message holds a header, the pickle stream and each out-of-band buffer:

    b"FIP5" | u32 pickle length | u32 buffer count | u64 length per buffer | pickle | buffers

(all little-endian). A numpy array, a ``bytearray`` or any object that hands
its data to pickle as a ``PickleBuffer`` travels as a buffer: written once
into the message (on a Ring, straight into the reserved space) and, on
receipt, copied once out of it (Ring) or not at all (Channel). Buffers that
are not contiguous go in-band, inside the pickle stream.

Unpickling runs code the sender chose: receive objects only from processes
you trust (see ``Ring.recv_obj``).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

__all__ = ["MAGIC", "encode", "load", "unpack"]

MAGIC = b"FIP5"
_HEAD = struct.Struct("<4sII")


#: At most this many out-of-band buffers in a message: a hostile one of
#: many empty buffers must not make the receiver build millions of views.
#: An object with more is pickled with its buffers in-band.
MAX_BUFFERS = 1 << 16
_U32 = struct.Struct("<I")
_NO_BUFFERS = _U32.pack(0)


def encode(obj: Any) -> tuple[list[Any], int]:
    """The pieces of ``obj``'s message (header, pickle, buffers) and their total size (bytes)."""
    found: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=found.append)
    if not found:  # the common small case: one header, no table
        return [MAGIC + _U32.pack(len(data)) + _NO_BUFFERS, data], 12 + len(data)
    if len(found) > MAX_BUFFERS:
        data = pickle.dumps(obj, protocol=5)  # all in-band
        return [MAGIC + _U32.pack(len(data)) + _NO_BUFFERS, data], 12 + len(data)
    try:
        raws = [b.raw() for b in found]
    except BufferError:  # one is not contiguous: let pickle copy those in-band
        raws = []

        def out_of_band(buf: pickle.PickleBuffer) -> bool:
            try:
                raws.append(buf.raw())
            except BufferError:
                return True
            return False

        data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    head = _HEAD.pack(MAGIC, len(data), len(raws)) + struct.pack(
        f"<{len(raws)}Q", *(r.nbytes for r in raws)
    )
    pieces: list[Any] = [head, data, *raws]
    return pieces, len(head) + len(data) + sum(r.nbytes for r in raws)


def unpack(message: Any, copy_buffers: bool) -> tuple[Any, list[Any]]:
    """The pickle stream and out-of-band buffers of ``message`` (made by :func:`encode`).

    ``copy_buffers``: copy both out (the message's memory is about to go;
    the buffers are then writable) rather than return read-only views into
    ``message``. Raises ValueError if it is not such a message.
    """
    view = memoryview(message).cast("B")
    if len(view) < _HEAD.size:
        raise ValueError(f"not an object message: {len(view)} bytes, shorter than its header")
    magic, nbytes, count = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise ValueError("not an object message (sent with send(), not send_obj()?)")
    if count == 0 and _HEAD.size + nbytes == len(view):
        return view[_HEAD.size :].tobytes() if copy_buffers else view[_HEAD.size :], []
    if count > MAX_BUFFERS:
        raise ValueError(f"corrupt object message: {count} buffers, over {MAX_BUFFERS}")
    at = _HEAD.size + 8 * count
    if at > len(view):
        raise ValueError("truncated object message: its buffer table runs past the end")
    lengths = struct.unpack_from(f"<{count}Q", view, _HEAD.size)
    if at + nbytes + sum(lengths) != len(view):
        raise ValueError("corrupt object message: its lengths do not add up to its size")
    data: Any = view[at : at + nbytes]
    at += nbytes
    buffers = []
    for n in lengths:
        part = view[at : at + n]
        buffers.append(bytearray(part) if copy_buffers else part.toreadonly())
        at += n
    if copy_buffers:
        data = bytes(data)  # nothing may point into the message once unpack returns
    return data, buffers


def load(data: Any, buffers: list[Any]) -> Any:
    """Unpickle what :func:`unpack` returned (runs code the sender chose: trusted peers only)."""
    return pickle.loads(data, buffers=buffers)
