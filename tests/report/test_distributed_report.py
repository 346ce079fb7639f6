"""``curvkit report`` under ``torchrun``: the numbers of one process, written by rank 0 only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TIMEOUT = 400
"""Seconds a report may take before the test fails (instead of hanging)."""


def _report(out: Path, *launcher: str) -> str:
    environment = {**os.environ, "PYTHONPATH": os.fspath(ROOT), "OMP_NUM_THREADS": "1"}
    environment.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        *launcher,
        "-m",
        "curvkit",
        "report",
        "--quick",
        "--no-dense",
        "--out",
        os.fspath(out),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, env=environment, check=True, cwd=out.parent
    )
    return completed.stdout


def _assert_numbers_close(one: object, two: object, where: str) -> None:
    if isinstance(one, dict):
        assert one.keys() == two.keys(), where
        for key in one:
            _assert_numbers_close(one[key], two[key], f"{where}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), where
        for index, (first, second) in enumerate(zip(one, two)):
            _assert_numbers_close(first, second, f"{where}[{index}]")
    elif isinstance(one, float):
        assert math.isclose(one, two, rel_tol=1e-4, abs_tol=1e-6), f"{where}: {one} vs {two}"
    else:
        assert one == two, where


@pytest.mark.slow
def test_two_processes_write_the_report_of_one(tmp_path):
    alone = _report(tmp_path / "one")
    launched = _report(tmp_path / "two", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert alone.count("The report is in") == launched.count("The report is in") == 1  # rank 0 prints
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert one["problem"] == two["problem"]
    assert one["analyses"].keys() == two["analyses"].keys()
    for key, analysis in one["analyses"].items():
        assert analysis["status"] == two["analyses"][key]["status"], key
        _assert_numbers_close(analysis["numbers"], two["analyses"][key]["numbers"], key)
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == sorted(
        path.name for path in (tmp_path / "one").iterdir()
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]  # nothing else written
