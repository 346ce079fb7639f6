"""The report-runtime benchmark times the README's first command, which installs and runs the report."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "report_runtime.py"


def test_first_command_installs_and_runs_the_report():
    spec = importlib.util.spec_from_file_location("report_runtime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = module.first_command()
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==")
    assert 'pip install -e ".[report]"' in command
    assert command.endswith("&& curvkit report")
