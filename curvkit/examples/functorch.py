"""Dense curvature matrices via ``torch.func``, with the signatures the tutorials use.

Thin wrappers over :mod:`curvkit.reference`; ``input_key`` names the entry of a dict input ``X``
whose leading dimension is the batch size (every entry must be batched, see the reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial

import torch
from torch import Tensor, nn

from curvkit import reference
from curvkit.reference import Batch, BatchSizeFn, Params


def _leading_dim(key: str, X: Tensor | Mapping[str, Tensor]) -> int:
    return X[key].shape[0] if isinstance(X, Mapping) else X.shape[0]


def _batch_size_fn(input_key: str | None) -> BatchSizeFn | None:
    """``X -> X[input_key].shape[0]`` for dict inputs (``input_key`` is ignored for tensors)."""
    return None if input_key is None else partial(_leading_dim, input_key)


def functorch_hessian(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    input_key: str | None = None,
) -> Tensor:
    """Dense Hessian of the full-data risk, ``[D, D]``; see :func:`curvkit.reference.hessian_matrix`.

    Example:
        >>> import torch
        >>> model, X = torch.nn.Linear(2, 1), torch.randn(4, 2)
        >>> loss = torch.nn.MSELoss(reduction="sum")
        >>> H = functorch_hessian(model, loss, list(model.parameters()), [(X, torch.zeros(4, 1))])
        >>> torch.allclose(H[:2, :2], 2 * X.T @ X)
        True
    """
    return reference.hessian_matrix(model_func, loss_func, params, data, _batch_size_fn(input_key))


def functorch_ggn(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    input_key: str | None = None,
) -> Tensor:
    """Dense generalized Gauss-Newton, ``[D, D]``; see :func:`curvkit.reference.ggn_matrix`."""
    return reference.ggn_matrix(model_func, loss_func, params, data, _batch_size_fn(input_key))


def functorch_empirical_fisher(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    input_key: str | None = None,
) -> Tensor:
    """Dense empirical Fisher, ``[D, D]``; see :func:`curvkit.reference.empirical_fisher_matrix`."""
    return reference.empirical_fisher_matrix(model_func, loss_func, params, data, _batch_size_fn(input_key))


def functorch_jacobian(
    model_func: nn.Module, params: Params, data: Iterable[Batch], input_key: str | None = None
) -> Tensor:
    """Dense Jacobian of the outputs, ``[N·C, D]``; see :func:`curvkit.reference.jacobian_matrix`."""
    return reference.jacobian_matrix(model_func, params, data, _batch_size_fn(input_key))


def functorch_gradient_and_loss(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    input_key: str | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Gradient (shaped like ``params``) and loss; see :func:`curvkit.reference.gradient_and_loss`."""
    return reference.gradient_and_loss(model_func, loss_func, params, data, _batch_size_fn(input_key))


def blocks_to_matrix(blocks: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
    """The matrix of parameter blocks ``blocks[i][j]`` (as ``torch.func.hessian`` returns them by name).

    Block ``(i, j)`` is reshaped to ``[numel_i, numel_j]``; ``numel_i`` is read off the square
    diagonal block ``(i, i)``.
    """
    names = list(blocks)
    rows = []
    for name in names:
        num_rows = round(blocks[name][name].numel() ** 0.5)
        rows.append(torch.cat([blocks[name][other].reshape(num_rows, -1) for other in names], dim=1))
    return torch.cat(rows)
