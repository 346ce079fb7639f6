"""Run a script in a fresh Python process whose peak memory is the computation's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def measured(script: str) -> dict:
    """The JSON object that ``script`` prints last, run with this checkout's curvkit.

    The C allocator maps every block of 64 KiB or more on its own and returns it when freed, so
    that the resident set's peak (``curvkit._memory.PeakMemory``) is what the script's
    computation held at once.
    """
    environment = {**os.environ, "PYTHONPATH": os.fspath(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, "-c", script]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=300, check=True
    )
    return json.loads(completed.stdout.splitlines()[-1])
