"""Probe that model and data are deterministic, so that a matrix is well defined.

An operator multiplies by iterating the data anew for each product. If the data loader
shuffles or augments, or the model's forward pass is random (dropout) or depends on the other
samples of a batch (BatchNorm in train mode), successive products multiply with different
matrices and every iterative method built on them silently goes wrong. The probe runs two
passes over the data and two products with the same vector and requires them to agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from curvkit._engine.batches import MiniBatchEngine
from curvkit._engine.finite import MODEL_HINT, check_finite
from curvkit._engine.iteration import Batch
from curvkit._engine.reduction import position_weights


def random_modules_in_train_mode(model: nn.Module) -> list[str]:
    """Names of sub-modules whose train-mode forward pass is random or batch-coupled."""
    offenders = []
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, _BatchNorm):
            offenders.append(f"'{name}' ({type(module).__name__}: uses batch statistics in train mode)")
        elif isinstance(module, _DropoutNd) and module.p > 0:
            offenders.append(f"'{name}' ({type(module).__name__} with p={module.p} in train mode)")
        elif isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            offenders.append(f"'{name}' (MultiheadAttention with dropout={module.dropout} in train mode)")
    return offenders


def batch_coupled_modules(model: nn.Module) -> list[str]:
    """Names of sub-modules that normalize with the batch's statistics even in eval mode.

    A ``BatchNorm`` without running statistics (``track_running_stats=False``) couples the
    samples of a batch in either mode, so a batch's matrix depends on which samples share it.
    """
    return [
        f"'{name}' ({type(module).__name__} with track_running_stats=False: "
        "uses batch statistics in eval mode too)"
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and not module.training and module.running_mean is None
    ]


def _fingerprint(tensors: list[Tensor]) -> Tensor:
    """Three statistics per tensor: sum, position-weighted sum, sum of squares (float64 results).

    Equal data gives equal fingerprints; a permutation changes the weighted sum, a sign flip the
    sum. Each statistic is one reduction over the tensor as it is (``torch.dot`` with weights kept
    per length, :func:`~curvkit._engine.reduction.position_weights`), without float64 copies
    (docs/design-notes.md, "The probes' cost").
    """
    values = []
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        if flat.dtype not in (torch.float32, torch.float64):  # integers, half precision
            flat = flat.to(torch.float64)
        weights = position_weights(flat.numel(), flat.dtype, flat.device)
        values.append(torch.stack([flat.sum(), torch.dot(weights, flat), torch.dot(flat, flat)]).double())
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def check_deterministic(
    engine: MiniBatchEngine,
    model_func: Callable,
    batch_tensors: Callable[[Batch], Mapping[str, Tensor]],
    product: Callable[[Tensor], Tensor] | None,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> bool:
    """Raise unless two passes over the data and two products agree.

    The products are one vector alone and the same vector in a block of two columns, which
    curvature operators compute different ways (single vectors through ``torch.autograd``,
    columns under ``torch.func.vmap``). If they disagree, a third product, the vector alone
    again, tells randomness (an error) from a wrong batching rule of some operation of the model
    under ``vmap`` (the return value). The first pass also checks every batch's tensors for NaN
    and infinity (:func:`curvkit._engine.finite.check_finite`), so that a product that is not
    finite can only come from a derivative.

    Args:
        engine: The mini-batch engine of the operator.
        model_func: The model; modules are also scanned for random train-mode layers.
        batch_tensors: Maps a batch to the tensors that must repeat and be finite, by the
            names error messages use (``"the input X"``, ``"the target y"``, ``"the model output"``,
            ``"the loss"``).
        product: Multiplies the operator onto a ``[dim, k]`` tensor; ``None`` for a computation
            that is not a product (the GGN diagonal): model and data are checked alone.
        dim: Input dimension of the operator.
        dtype: Its dtype.
        device: Its device.

    Returns:
        Whether a block of columns gives the same product as its vectors alone (``True``
        without ``product``).

    Raises:
        RuntimeError: Naming what is not deterministic and how to fix it.
        ValueError: Naming the batch whose model output or loss is not finite.
    """
    check_model(model_func)
    with torch.no_grad():
        passes = [fingerprint_pass(engine, batch_tensors, first_pass=run == 0) for run in range(2)]
    compare_passes(*passes)
    if product is None:
        return True
    generator = torch.Generator(device=device).manual_seed(0)
    vectors = torch.rand(dim, 2, generator=generator, dtype=dtype, device=device)
    single, both = product(vectors[:, :1]), product(vectors)
    if not bool(torch.isfinite(single).all()):
        raise RuntimeError(
            "check_deterministic: the product with a random vector holds NaN or infinity, although "
            "every batch's inputs, targets, model output and loss are finite: a derivative of the "
            "model or the loss is not (a square root or logarithm at 0, say, or an overflow)."
        )
    # half precision: the two paths' products differ by a rounding or two (relative to the largest entry)
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 16 * torch.finfo(dtype).eps)

    def agree(first: Tensor, second: Tensor) -> bool:
        return torch.allclose(first, second, rtol=tolerance, atol=tolerance * first.abs().max().item())

    if agree(single, both[:, :1]):
        return True
    if not agree(single, product(vectors[:, :1])):
        raise RuntimeError(
            "check_deterministic: two products with the same vector differ. The model's forward "
            "pass or the data is random."
        )
    return False  # deterministic, but the columns' path (torch.func.vmap) computes something else


def check_model(model_func: Callable) -> None:
    """Raise for modules that are random in train mode or couple the samples of a batch.

    Raises:
        RuntimeError: Naming the modules and how to fix it.
    """
    if not isinstance(model_func, nn.Module):
        return
    offenders = random_modules_in_train_mode(model_func)
    if offenders:
        raise RuntimeError(
            "check_deterministic: model_func is not deterministic: "
            + "; ".join(offenders)
            + ". Call model_func.eval() (or set dropout to 0) before building the operator."
        )
    coupled = batch_coupled_modules(model_func)
    if coupled:
        raise RuntimeError(
            "check_deterministic: model_func couples the samples of a batch: "
            + "; ".join(coupled)
            + ". The products would depend on how data is split into batches, not give the "
            "full-data matrix. Use running statistics, or pass check_deterministic=False to "
            "accept the per-batch matrices."
        )


def fingerprint_pass(
    engine: MiniBatchEngine, batch_tensors: Callable[[Batch], Mapping[str, Tensor]], first_pass: bool
) -> dict[int, Tensor]:
    """One pass over the data: each batch's fingerprint by index (finite checks on the first)."""
    fingerprints = {}
    for batch in engine.batches():
        tensors = batch_tensors(batch)
        if first_pass:
            check_finite(batch.index, tensors, MODEL_HINT)
        fingerprints[batch.index] = _fingerprint(list(tensors.values()))
    return fingerprints


def compare_passes(
    first: dict[int, Tensor], second: dict[int, Tensor], num_second: int | None = None
) -> None:
    """Raise unless two passes saw as many batches (``num_second`` if given) with equal fingerprints.

    Batches missing from ``second`` (a computation that skips batches without loss terms) are
    not compared.

    Raises:
        RuntimeError: Naming the first batch that differs, or the numbers of batches.
    """
    num_second = len(second) if num_second is None else num_second
    if len(first) != num_second:
        raise RuntimeError(
            f"check_deterministic: data yielded {len(first)} and then {num_second} batches. "
            "The data must give the same batches in every pass (no drop_last with shuffling)."
        )
    for index in sorted(second):
        previous, current = first.get(index), second[index]
        if (
            previous is None
            or previous.shape != current.shape
            or not torch.allclose(previous, current, rtol=1e-6, atol=1e-8, equal_nan=True)
        ):
            raise RuntimeError(
                f"check_deterministic: batch {index} differs between two passes over the data (inputs, "
                "targets, model output or loss). Use a data loader without shuffling or augmentation "
                "and a model without randomness, or pass check_deterministic=False if you know better."
            )


class SharedPassProbe:
    """The probe for a computation that passes over the data once anyway (the GGN diagonal).

    Its first pass runs up front (model checks, finite checks, fingerprints); the second is the
    computation's own: it hands each batch's tensors to :meth:`record`, and :meth:`finish`
    compares. One forward pass over the data less than :func:`check_deterministic` without a
    product.

    Args:
        engine: The mini-batch engine.
        model_func: The model.
        batch_tensors: As for :func:`check_deterministic`.
    """

    def __init__(
        self,
        engine: MiniBatchEngine,
        model_func: Callable,
        batch_tensors: Callable[[Batch], Mapping[str, Tensor]],
    ):
        check_model(model_func)
        self.engine = engine
        with torch.no_grad():
            self.first = fingerprint_pass(engine, batch_tensors, first_pass=True)
        self.second: dict[int, Tensor] = {}

    def record(self, batch: Batch, tensors: Mapping[str, Tensor]) -> None:
        """The computation's tensors of ``batch`` (inputs, targets, model output, loss)."""
        with torch.no_grad():
            self.second[batch.index] = _fingerprint(list(tensors.values()))

    def finish(self) -> None:
        """Compare the computation's pass with the first (after it ended).

        Raises:
            RuntimeError: As :func:`check_deterministic`.
        """
        compare_passes(self.first, self.second, self.engine.batches_in_last_pass)
