"""The benchmark: what ``fastipc bench`` measures, as a package of small modules.

- :mod:`.model`: the Ring report model (figures, configuration, measurements, the report).
- :mod:`.ring`: the Ring engine in the parent: places the pairs of child processes, times them.
- :mod:`.ring_roles`: what the Ring children run (producer, consumer, ping, echo, idle).
- :mod:`.channel` / :mod:`.channel_roles`: the Channel figures, parent and measuring process.
- :mod:`.format`: the reports as text tables and markdown.
- :mod:`.harness`: the process harness shared with the scripts in ``benchmarks/``.
- :mod:`.machine`: what /proc says about the machine and the children.
- :mod:`.peers` / :mod:`.peers_roles` / :mod:`.peers_report`: ``fastipc bench --peers``
  and ``--scaling``, fastipc against other IPC transports (engine, measuring
  process, tables and plots); :mod:`.baseline`: the machine's own limits
  (one-core memcpy, a bare C SPSC ring) measured in the same run.
- :mod:`.broadcast`: ``fastipc bench --broadcast``, the broadcast ring (one
  publisher, 1-8 subscriber processes) against pyzmq PUB/SUB and iceoryx2.

Only the command line (``fastipc bench``) imports this package; the library never does.
"""

from __future__ import annotations

from .channel import rows as channel_rows
from .format import format_channel_rows, format_markdown, format_table
from .harness import BenchError
from .machine import machine_info
from .model import BACKENDS, FIGURES, BenchConfig, BenchReport, Figure, Measurement
from .ring import probe_backend, run_benchmark

__all__ = [
    "BACKENDS",
    "FIGURES",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "Figure",
    "Measurement",
    "channel_rows",
    "format_channel_rows",
    "format_markdown",
    "format_table",
    "machine_info",
    "probe_backend",
    "run_benchmark",
]
