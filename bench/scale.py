"""The scale benchmark: 1,000 hollow nodes and 100,000 tasks against a real manager by default.

    .venv/bin/python bench/scale.py [--nodes N] [--tasks T] [--services S] [--profile out.svg]

Prints the figures, then ``scale: nodes=N tasks=T all_running_s=... rss_mb=...`` as the last line.
"""

from __future__ import annotations

import sys

from shoal.bench.scale import main

if __name__ == "__main__":
    sys.exit(main())
