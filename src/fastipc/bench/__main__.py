"""Command line of the benchmark package's processes.

``python -m fastipc.bench channel [SECONDS]``
    print the Channel figures as a table (``fastipc bench`` prints them
    after the Ring table).
``python -m fastipc.bench channel --child KIND SECONDS``
    one Channel figure, measured in this process (started by the engine).
``python -m fastipc.bench aio [--repeat N] [--duration S] [--rounds N] [--loop L]``
    the asyncio figures (``fastipc bench --aio``); ``aio --role ...`` is one
    of its child processes.
``python -m fastipc.bench peer SPEC_JSON``
    one figure of one transport of the peers comparison (started by
    :mod:`fastipc.bench.peers`).
``python -m fastipc.bench ROLE SPEC_JSON``
    one side of a Ring measurement (started by the engine).

The whole benchmark is ``fastipc bench``.
"""

from __future__ import annotations

import sys


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "channel":
        from .channel import main

        return main(argv[1:])
    if argv and argv[0] == "aio":
        from .aio_engine import main as aio_main

        return aio_main(argv[1:])
    if argv and argv[0] == "peer":
        from .peers_roles import child_main as peer_main

        return peer_main(argv[1:])
    from .ring_roles import child_main

    return child_main(argv)


if __name__ == "__main__":
    try:
        sys.exit(_main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - any failure becomes one line for the parent
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
