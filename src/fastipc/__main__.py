"""``python -m fastipc``: the same command as the ``fastipc`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
