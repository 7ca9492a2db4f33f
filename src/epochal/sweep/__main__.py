"""``python -m epochal.sweep SWEEP_DIR``: one worker process of a sweep (the coordinator starts these)."""

import sys

from epochal.sweep.worker import main

sys.exit(main())
