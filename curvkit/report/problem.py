"""The problem a report analyses: model, loss, data and the selected parameters, on one device and dtype."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from curvkit.report.settings import DTYPES, ReportInputError, ReportSettings

Batch = tuple[Any, Tensor]


@dataclasses.dataclass
class Problem:
    """What every analysis of a report works on.

    Attributes:
        name: Short description (``'mlp'``, ``'cnn'`` or the user's ``--model``).
        model: The network, on ``device`` in ``dtype``.
        loss_function: The loss.
        data: The mini-batches ``(X, y)``, read once into memory, on ``device``.
        params: The selected parameters by name (``model.named_parameters()``), in the model's
            order: the curvature matrices' rows and columns.
        all_param_names: Every trainable parameter's name, selected or not.
        description: One sentence on the model, data and training, for the page.
        process_group: ``None``, or (under ``torchrun``, :mod:`curvkit.report.launch`) the
            process group over whose ranks the data is sharded: ``data`` is this rank's shard.
        totals: Samples and batches of all ranks' shards (``None``: ``data`` is all the data).
    """

    name: str
    model: nn.Module
    loss_function: Any
    data: list[Batch]
    params: dict[str, Tensor]
    all_param_names: list[str]
    description: str
    process_group: Any = None
    totals: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def dim(self) -> int:
        """``D``, the number of selected parameter entries."""
        return sum(p.numel() for p in self.params.values())

    @property
    def num_data(self) -> int:
        """Number of samples (the first axis of every input, summed over the batches of all ranks)."""
        return self.totals[0] if self.totals else sum(batch_size(X) for X, _ in self.data)

    @property
    def num_batches(self) -> int:
        """Number of batches (of all ranks)."""
        return self.totals[1] if self.totals else len(self.data)

    @property
    def param_list(self) -> list[Tensor]:
        return list(self.params.values())

    @property
    def layers(self) -> list[tuple[str, int]]:
        """The selected parameters grouped by the module holding them, in order: ``(module, entries)``.

        These are the blocks whose boundaries the heat maps draw.
        """
        layers: list[tuple[str, int]] = []
        for name, param in self.params.items():
            module = name.rpartition(".")[0] or "(model)"
            if layers and layers[-1][0] == module:
                layers[-1] = (module, layers[-1][1] + param.numel())
            else:
                layers.append((module, param.numel()))
        return layers

    @property
    def batch_size_fn(self) -> Any:
        """What the operators need to count the samples of dict inputs (``None`` for tensors)."""
        return batch_size if isinstance(self.data[0][0], Mapping) else None


def batch_size(X: Any) -> int:
    """Samples in an input: a tensor's first axis, or that of a dict's first tensor."""
    if isinstance(X, Mapping):
        X = next(iter(X.values()))
    return X.shape[0]


def prepared_problem(
    name: str,
    model: nn.Module,
    loss_function: Any,
    data: Iterable[Batch],
    description: str,
    settings: ReportSettings,
) -> Problem:
    """Move model and data to the settings' device and dtype, and select the parameters.

    Args:
        name: Short description of the model.
        model: The network.
        loss_function: The loss (moved along if it is a module).
        data: Mini-batches ``(X, y)``, each a pair of tensors (``X`` may be a dict of tensors).
        description: One sentence for the page.
        settings: Device, dtype and the ``--params`` pattern.

    Returns:
        The problem, ready for the analyses.

    Raises:
        ReportInputError: If ``--params`` selects no parameter, the model has none to train, or
            ``loss_function(model(X), y)`` is no scalar on the first batch.
    """
    device = torch.device(settings.device) if settings.device else _model_device(model)
    dtype = DTYPES[settings.dtype] if settings.dtype else _model_dtype(model)
    model = model.to(device=device, dtype=dtype)
    if isinstance(loss_function, nn.Module):
        loss_function = loss_function.to(device=device, dtype=dtype)
    batches = [(_moved(X, device, dtype), _moved(y, device, dtype)) for X, y in data]
    selected = selected_params(model, name, settings.params)
    _check_first_batch(name, model, loss_function, batches[0])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return Problem(name, model, loss_function, batches, selected, trainable, description)


def _check_first_batch(name: str, model: nn.Module, loss_function: Any, batch: Batch) -> None:
    """Raise :class:`ReportInputError` unless the loss of the first batch is a scalar."""
    X, y = batch
    try:
        with torch.no_grad():
            loss = loss_function(model(X), y)
    except Exception as error:
        message = " ".join(str(error).split())
        raise ReportInputError(
            f"--model {name!r}: loss_function(model(X), y) fails on the first batch: "
            f"{type(error).__name__}: {message}"
        ) from None
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = list(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ReportInputError(f"--model {name!r}: loss_function(model(X), y) must be a scalar, got {shape}.")


def selected_params(model: nn.Module, name: str, pattern: str | None) -> dict[str, Tensor]:
    """The trainable parameters whose names match ``pattern`` (``re.search``; ``None``: all).

    Raises:
        ReportInputError: If the model has no trainable parameter, or ``pattern`` selects none.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ReportInputError(f"--model {name!r}: the model has no trainable parameters.")
    if pattern is None:
        return dict(trainable)
    selected = {n: p for n, p in trainable if re.search(pattern, n)}
    if not selected:
        names = ", ".join(n for n, _ in trainable[:12]) + (", ..." if len(trainable) > 12 else "")
        raise ReportInputError(
            f"--params {pattern!r} selects no parameter; the model's parameters are: {names}."
        )
    return selected


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device


def _model_dtype(model: nn.Module) -> torch.dtype:
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return floating[0] if floating else torch.get_default_dtype()


def _moved(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A tensor (or a dict of them) on ``device``; floating-point ones converted to ``dtype``."""
    if isinstance(value, Mapping):
        return {key: _moved(entry, device, dtype) for key, entry in value.items()}
    if value.is_floating_point():
        return value.to(device=device, dtype=dtype)
    return value.to(device=device)
