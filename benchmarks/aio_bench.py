#!/usr/bin/env python3
"""The asyncio benchmark (fastipc.aio vs asyncio streams vs sync fastipc); see fastipc/bench/aio_engine.py.

python benchmarks/aio_bench.py [--repeat N] [--duration S] [--rounds N] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import os
import sys

try:
    import fastipc  # noqa: F401 - installed, or on PYTHONPATH
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from fastipc.bench.aio_engine import main

if __name__ == "__main__":
    sys.exit(main())
