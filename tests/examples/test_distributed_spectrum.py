"""``torchrun --nproc_per_node=2 examples/distributed_spectrum.py`` prints what one process prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "examples" / "distributed_spectrum.py"
TIMEOUT = 240
"""Seconds each run may take before the test fails (instead of hanging)."""


def _run(*launcher: str) -> list[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(ROOT)}
    environment.pop("WORLD_SIZE", None)
    completed = subprocess.run(
        [sys.executable, *launcher, os.fspath(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
        check=True,
    )
    return completed.stdout.splitlines()


@pytest.mark.slow
def test_two_processes_print_the_numbers_of_one():
    alone = _run()
    launched = _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert alone[0].startswith("processes: 1") and launched[0].startswith("processes: 2")
    assert len(alone) == len(launched) == 4
    assert launched[1:] == alone[1:]
