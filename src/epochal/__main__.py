"""``python -m epochal``: the same command line as ``epochal`` (and the form torchrun needs)."""

import sys

from epochal.cli import main

if __name__ == "__main__":
    sys.exit(main())
