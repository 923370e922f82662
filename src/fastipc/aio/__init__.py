"""asyncio faces of Ring, Channel and a server: awaitables that never block the event loop.

Why a separate module rather than ``arecv``-style methods on the same
classes: ``import fastipc`` stays import-light (it loads neither asyncio nor
any transport, checked by tests/test_transport_registry.py), the sync classes
keep one face each, and every awaitable here is a thin loop around the sync
call of the same name. Imports point down: this module uses the public
classes; nothing in fastipc imports it.

How waiting works (docs/architecture.md, "asyncio"):

* The take is always a non-blocking sync call (``timeout=0``) made on the
  loop thread, never in an executor: a cancelled await either returned its
  message or left it where it was. No thread waits on anyone's behalf.
* A Ring (and a broadcast Subscriber, on its slot's bell) waits on its doorbell (``Ring.fileno()``'s FIFO) with
  ``loop.add_reader``: register as a watcher in the segment, re-check the
  ring, then wait; producers ring the bell only while someone watches. A
  0.2 s timer re-checks anyway (a watcher or producer killed at the wrong
  instant, a bell another waiter drained). A woken waiter that leaves
  without its message (cancelled, timed out) rings the bell again, and one
  that takes a message while more wait and others watch passes the word on,
  so no waiter in another process is left asleep on a drained bell.
* A Channel waits with ``loop.add_reader``/``add_writer`` on its socket, after
  a ``timeout=0`` receive has used what is already buffered (a selector
  cannot see those bytes: the edge-triggered lesson of pyzmq).
* ``close()`` wakes every awaiter of the handle, which then raises what the
  sync call raises on a closed handle (ValueError).
"""

from ._channel import Channel, Handler, Listener, Server, listen, serve
from ._ring import Ring
from ._subscriber import Subscriber

__all__ = ["Channel", "Handler", "Listener", "Ring", "Server", "Subscriber", "listen", "serve"]
