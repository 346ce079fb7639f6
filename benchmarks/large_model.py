"""The linear algebra at real model size: a ResNet-18 (11.2 million parameters) on 8 CIFAR-sized images.

For the GGN of that model (CE, mean; one batch of 8 random 3×32×32 images, eval-mode BatchNorm,
float32; ``max_columns = 16``) the script runs, once each,

- ``hutchinson_trace(G, 300)`` and ``hutchpp_trace(G, 60)``: wall time, the time inside products
  (the operator is wrapped to time them), the estimator's own overhead as a share of the products'
  time, and the extra peak memory next to that of one 16-column product, which the estimator pays
  anyway, in vectors of length ``D`` against the estimator's documented bound;
- ``lanczos_eigsh(G, k=3)``: time, products, and the quality of the eigenpairs in float32:
  orthonormality ``max |UᵀU - I|`` (float64 arithmetic) and the residuals ``‖G u - θ u‖``
  relative to ``max |θ|`` against the documented bound ``(k + 1) · tol``.

The ResNet-18 is torchvision's layout for CIFAR (3×3 stem without pooling, four stages of two
basic blocks, 64-512 channels), written out here so that torchvision is not needed.

Usage::

    python benchmarks/large_model.py            # 20-40 minutes on 2 cores
    python benchmarks/large_model.py --quick    # smoke run (CI): channels / 8, small budgets
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from measure import MemoryProbe, synchronize
from torch import nn

from curvkit import GGNLinearOperator
from curvkit.linalg import hutchinson_trace, hutchpp_trace, lanczos_eigsh
from curvkit.linear_operator import LinearOperator

BLOCK = 16
BUDGETS = {"hutchinson": 300, "hutchpp": 60, "k": 3}
QUICK_BUDGETS = {"hutchinson": 30, "hutchpp": 12, "k": 2}
TOL = 1e-6  # lanczos_eigsh's default


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a (projected) shortcut."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(width: int = 64, num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 for 32×32 images; ``width=64`` has 11,173,962 parameters."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    channels = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        layers += [
            BasicBlock(channels, width * 2**stage, stride),
            BasicBlock(width * 2**stage, width * 2**stage, 1),
        ]
        channels = width * 2**stage
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


class TimedOperator(LinearOperator):
    """The operator, with the wall time and columns of its products added up."""

    def __init__(self, operator: LinearOperator):
        super().__init__(operator.shape, dtype=operator.dtype, device=operator.device, psd=operator.is_psd)
        self.operator, self.seconds, self.columns = operator, 0.0, 0

    @property
    def columns_per_product(self) -> int | None:
        return self.operator.columns_per_product

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        synchronize(X.device)
        start = time.perf_counter()
        result = self.operator.matmat(X)
        synchronize(X.device)
        self.seconds += time.perf_counter() - start
        self.columns += X.shape[1]
        return result


def _timed_call(function: Callable[[], object], device: torch.device, elapsed: list[float]) -> None:
    """Call ``function``; append its wall time (device work included) to ``elapsed``."""
    start = time.perf_counter()
    function()
    synchronize(device)
    elapsed.append(time.perf_counter() - start)


def eigenpair_quality(G: LinearOperator, values: torch.Tensor, U: torch.Tensor) -> tuple[float, float]:
    """``max |UᵀU - I|`` and ``max_i ‖G u_i - θ_i u_i‖ / max |θ|``, in float64 arithmetic."""
    U64 = U.double()
    orthonormality = (U64.T @ U64 - torch.eye(U.shape[1], dtype=torch.float64, device=U.device)).abs().max()
    residuals = torch.linalg.vector_norm(G.matmat(U).double() - U64 * values.double(), dim=0)
    return float(orthonormality), float(residuals.max() / values.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: channels / 8, small budgets")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet18(width=8 if args.quick else 64).eval().to(device)
    data = [(torch.randn(8, 3, 32, 32, device=device), torch.randint(0, 10, (8,), device=device))]
    params = [p for p in model.parameters() if p.requires_grad]
    G = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data, check_deterministic=False)
    G.max_columns = BLOCK
    D = G.shape[0]
    timed = TimedOperator(G)
    timed.max_columns = BLOCK
    probe = MemoryProbe(device)
    vector_bytes = D * 4

    block = torch.randn(BLOCK, D, device=device).T
    G.matmat(block)  # warm-up
    block_peak = probe.peak_during(partial(G.matmat, block)) if probe.available else None
    del block

    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    tasks = {
        f"hutchinson_trace(G, {budgets['hutchinson']})": (
            partial(hutchinson_trace, timed, budgets["hutchinson"], seed=0),
            3 * BLOCK,
        ),
        f"hutchpp_trace(G, {budgets['hutchpp']})": (
            partial(hutchpp_trace, timed, budgets["hutchpp"], seed=0),
            budgets["hutchpp"] // 3 + 3 * BLOCK,
        ),
    }
    where = f"{torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else where
    quick = " (channels / 8, QUICK)" if args.quick else ""
    print(f"ResNet-18{quick}, D = {D:,}; 8 images 3×32×32; GGN, CE; max_columns = {BLOCK};")
    print(f"torch {torch.__version__}, {where}, float32\n")
    if block_peak is not None:
        print(f"One {BLOCK}-column product: extra peak {block_peak / vector_bytes:.1f} vectors of length D\n")
    print(
        "| task | products | seconds | in products | overhead | extra peak | beyond one block product "
        "| documented bound |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (task, bound) in tasks.items():
        timed.seconds, timed.columns = 0.0, 0
        elapsed: list[float] = []
        timed_task = partial(_timed_call, task, device, elapsed)
        # the task alone is timed: the probe's garbage collection and heap trimming before it are not
        peak = probe.peak_during(timed_task) if probe.available else timed_task()
        seconds = elapsed[0]
        overhead = (seconds - timed.seconds) / timed.seconds
        peak_vectors = "–" if peak is None else f"{peak / vector_bytes:.1f}"
        beyond = "–" if peak is None or block_peak is None else f"{(peak - block_peak) / vector_bytes:.1f}"
        print(
            f"| {name} | {timed.columns} | {seconds:.1f} | {timed.seconds:.1f} | {100 * overhead:.1f} % | "
            f"{peak_vectors} | {beyond} | {bound} |"
        )
    print("\n(memory in vectors of length D; overhead: time outside products / time in products)\n")

    k = budgets["k"]
    timed.seconds, timed.columns = 0.0, 0
    start = time.perf_counter()
    values, U = lanczos_eigsh(timed, k=k, seed=0)
    seconds = time.perf_counter() - start
    orthonormality, residual = eigenpair_quality(G, values, U)
    print(f"| lanczos_eigsh(G, k={k}) | products | seconds | in products | max abs(UᵀU − I) | residual |")
    print("|---|---:|---:|---:|---:|---:|")
    eigenvalues = ", ".join(f"{float(value):.4g}" for value in values)
    print(
        f"| eigenvalues {eigenvalues} | {timed.columns} | {seconds:.1f} | {timed.seconds:.1f} | "
        f"{orthonormality:.1e} | {residual:.1e} |"
    )
    print(f"\n(residual: max ‖G u − θ u‖ / max abs(θ); documented bound (k + 1) · tol = {(k + 1) * TOL:.0e})")


if __name__ == "__main__":
    main()
