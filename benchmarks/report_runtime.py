"""Wall-clock time of ``curvkit report`` on the default, and of the README's first command on a fresh venv.

```bash
python benchmarks/report_runtime.py                    # the report on the default, 3 runs (about 2 minutes)
python benchmarks/report_runtime.py --install          # also the README's first command in a fresh copy
python benchmarks/report_runtime.py --install --output benchmarks/results/report_runtime.md
```

The report runs as a user runs it, ``python -m curvkit report`` in a fresh process (Python's
start-up, imports and training included), on however many cores the machine has; the table says
how many and the load average around each run, since other processes share the cores.
``--install`` copies the working tree (tracked and untracked files, no ``.venv``) into a temporary
directory and runs the README's first ``bash`` block there, verbatim, with pip's cache off, as on a
fresh machine: venv, ``pip install torch==2.13.0``, ``pip install -e ".[report]"``,
``curvkit report``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def report_run(out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "curvkit", "report", "--out", str(out)],
        check=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def first_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return blocks[0].strip()


def install_run() -> tuple[float, str]:
    command = first_command()
    with tempfile.TemporaryDirectory(prefix="curvkit-fresh-") as directory:
        copy = Path(directory) / "curvkit"
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for file in files:
            if (ROOT / file).is_file():
                (copy / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / file, copy / file)
        environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        environment["PIP_NO_CACHE_DIR"] = "1"
        environment["PATH"] = os.pathsep.join(
            p for p in environment["PATH"].split(os.pathsep) if ".venv" not in p
        )
        start = time.perf_counter()
        subprocess.run(["bash", "-c", command], cwd=copy, env=environment, check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        assert (copy / "curvkit-report" / "index.html").is_file()
    return elapsed, command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--install", action="store_true", help="also time the README's first command")
    parser.add_argument("--output", type=Path, help="write the Markdown table there too")
    args = parser.parse_args()
    lines = [
        "# `curvkit report` on the default: wall-clock time",
        "",
        f"{os.cpu_count()} CPU cores shared with other processes (load average over 1, 5, 15 minutes "
        "before each run); `python -m curvkit report` in a fresh process, the built-in models on one "
        "thread (`curvkit report` sets it for them).",
        "",
        "| run | seconds | load before | start-up, training, page | eigenvalues | traces | densities "
        "| KFAC | sketch | dense |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as directory:
        for run in range(args.runs):
            before = load()
            seconds, metrics = report_run(Path(directory) / f"run{run}")
            analyses = {key: value["seconds"] for key, value in metrics["analyses"].items()}
            rest = seconds - sum(analyses.values())
            lines.append(
                f"| {run + 1} | {seconds:.1f} | {before} | {rest:.1f} | {analyses['eigenvalues']:.1f} | "
                f"{analyses['traces']:.1f} | {analyses['densities']:.1f} | {analyses['kfac']:.1f} | "
                f"{analyses['sketch']:.1f} | {analyses['dense']:.1f} |"
            )
            print(lines[-1], flush=True)
    if args.install:
        before = load()
        seconds, command = install_run()
        lines += [
            "",
            "## The README's first command on a fresh copy",
            "",
            f"`{command}`",
            "",
            f"{seconds:.0f} s (load average before: {before}; pip's cache off, torch's wheel and the "
            "other packages from this machine's local package index, as on CI's machines).",
        ]
        print(lines[-1])
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
