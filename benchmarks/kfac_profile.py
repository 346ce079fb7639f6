"""Where curvkit's KFAC factor pass spends its time: a py-spy profile, summed by phase.

Runs ``KFACLinearOperator(...).compute_kronecker_factors()`` (construction included, as
``kfac.py`` times it) repeatedly on one thread under py-spy, and sums the samples of the passes
(imports and the warm-up left out) by phase: the constructor's first-batch probe, forward,
output factor, backward to the layer outputs, input rows (unfolding), Gram products, the
engine's batch sums, and the factors' checks and symmetrization in
``KroneckerFactoredLinearOperator``. A sample counts for the first phase in that list whose
function is on its stack (py-spy sees Python frames: a torch call counts for its caller).

Usage::

    python benchmarks/kfac_profile.py mlp mc              # prints ms per pass and the phases
    python benchmarks/kfac_profile.py cnn type-2 --kfac-approx reduce --passes 20

py-spy must be on the path (``pip install py-spy``; not a dev extra); ``--worker`` runs the passes alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from problems import make_problem

PHASES = (  # (label, a function on the stack)
    ("constructor: first-batch probe", "ModelDataSetup._probe_first_batch"),
    ("constructor: other", "KFACLinearOperator.__init__"),
    ("symmetrization", "symmetrize_"),
    ("factor checks", "ParameterBlocks.__init__"),
    ("Gram products", "add_gram"),
    ("input rows (patches)", "_gram_rows"),
    ("output factor (sampling, loss Hessian)", "output_curvature"),  # before: it calls output_gradients
    ("backward to the layer outputs", "output_gradients"),
    ("forward", "ModelFunction.__call__"),
    ("forward (layer chain, no autograd graph)", "LayerChain.linearize"),
    ("finiteness checks", "nonfinite"),
    ("engine: the batch loop, the rest", "MiniBatchEngine"),
)


def passes(args) -> None:
    from curvkit import KFACLinearOperator

    torch.set_num_threads(1)
    model, loss_func, params, data = make_problem(args.problem, torch.device("cpu"), False)
    options = {"fisher_type": args.fisher_type, "kfac_approx": args.kfac_approx, "check_deterministic": False}
    KFACLinearOperator(model, loss_func, params, data, **options).compute_kronecker_factors()  # warm-up
    start = time.process_time()
    for _ in range(args.passes):
        KFACLinearOperator(model, loss_func, params, data, **options).compute_kronecker_factors()
    print(f"{(time.process_time() - start) / args.passes * 1e3:.1f} ms CPU time per pass")


def phases(raw: Path) -> Counter:
    """Samples per phase, from py-spy's raw output (one ``stack count`` line per stack)."""
    counts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if "KFACLinearOperator" not in stack or "_find_and_load" in stack:  # not a pass, or an import
            continue
        counts[next((label for label, key in PHASES if key in stack), "other")] += int(samples)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=("mlp", "cnn"))
    parser.add_argument("fisher_type", choices=("mc", "type-2", "empirical", "forward-only"))
    parser.add_argument("--kfac-approx", default="expand", choices=("expand", "reduce"))
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--worker", action="store_true", help="run the passes without py-spy")
    args = parser.parse_args()
    if args.worker:
        passes(args)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "profile.txt"
        command = ["py-spy", "record", "-r", "400", "-f", "raw", "-o", str(raw), "--", sys.executable]
        command += [__file__, "--worker", *sys.argv[1:]]
        finished = subprocess.run(command, capture_output=True, text=True, check=True)
        counts = phases(raw)
    print(next(line for line in finished.stdout.splitlines() if "per pass" in line))
    total = sum(counts.values())
    for label in [label for label, _ in PHASES] + ["other"]:
        print(f"{100 * counts[label] / total:5.1f} %  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
