"""The Hessian of the empirical risk."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from itertools import accumulate, pairwise
from numbers import Integral
from typing import Any

from torch import Tensor

from curvkit._engine import Batch
from curvkit._layers.chain import LayerChain
from curvkit._model.parameters import normalize_params
from curvkit.operators._curvature import CurvatureLinearOperator
from curvkit.operators._shortcut import AgreementCheck


class HessianLinearOperator(CurvatureLinearOperator):
    r"""Hessian of the empirical risk as a linear operator.

    .. math::
        \nabla^2_\theta \mathcal{L} = c \sum_{n=1}^N \nabla^2_\theta \ell(f_\theta(x_n), y_n)

    Products are reverse-over-reverse (a vector-Jacobian product of the gradient): through
    autograd for one vector, ``vmap``-ed over the columns of a matrix. An ``nn.Sequential`` of
    ``nn.Linear`` layers, convolutions and elementwise activations (MLPs, plain CNNs) has them
    written out instead, the same multiply-adds without an autograd graph of the gradient
    (:mod:`curvkit._layers.chain`; checked once against reverse over reverse). With
    ``block_sizes`` the operator is the block-diagonal part of the Hessian over consecutive
    groups of parameters.

    Args:
        block_sizes: Numbers of consecutive parameter tensors that form one diagonal block,
            summing to the number of parameter tensors; ``None`` (default) for the full Hessian.
        model_func, loss_func, params, data, progressbar, check_deterministic, shape, num_data,
            batch_size_fn, cache_batches, process_group: As for
            :class:`~curvkit.operators._curvature.CurvatureLinearOperator`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model, loss_func = nn.Linear(3, 2), nn.MSELoss()
        >>> data = [(torch.rand(5, 3), torch.rand(5, 2))]
        >>> H = HessianLinearOperator(model, loss_func, list(model.parameters()), data)
        >>> H.shape
        (8, 8)
        >>> bool((H @ torch.eye(8) - H.to_dense()).abs().max() < 1e-6)
        True
    """

    def __init__(
        self,
        model_func: Callable,
        loss_func: Callable,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        shape: tuple[int, int] | None = None,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        block_sizes: Sequence[int] | None = None,
        cache_batches: bool = False,
        process_group: object | None = None,
    ):
        num_tensors = len(normalize_params(params)[1])  # checks params before it is counted
        self._blocks = None if block_sizes is None else _blocks_of(block_sizes, num_tensors)
        super().__init__(
            model_func,
            loss_func,
            params,
            data,
            progressbar,
            check_deterministic,
            shape,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            cache_batches=cache_batches,
            process_group=process_group,
        )

    def _signature(self) -> str:
        return f"{type(self).__name__}, blocks {self._blocks}"

    @cached_property
    def _layer_chain(self) -> LayerChain | None:
        """The model as a chain of linear layers and elementwise functions, if it is one."""
        model = self._setup.model
        return LayerChain.of(model.model_func, self._setup.layer_map, len(model.tensors))

    @cached_property
    def _chain_check(self) -> AgreementCheck:
        return AgreementCheck(self._setup.model.model_func)

    def _batch_matmat(self, batch: Batch, tangents: list[Tensor], state: Any) -> list[Tensor]:
        result, several_columns = [], tangents[0].shape[0] > 1
        for block_index, block in enumerate(self._blocks or [list(range(len(tangents)))]):
            block_tangents = [tangents[i] for i in block]

            def general(block_index=block_index, block=block, block_tangents=block_tangents) -> list[Tensor]:
                hvp = self._setup.hessian_product(batch, block_index, block, several_columns)
                return hvp(block_tangents)

            result.extend(self._chain_matmat(batch, block, block_tangents, general, state))
        return result

    def _start_product(self) -> dict:
        return {}  # the layer chain's rearranged tangents, kept over the batches of a product

    def _chain_matmat(
        self,
        batch: Batch,
        block: list[int],
        tangents: list[Tensor],
        general: Callable[[], list[Tensor]],
        memo: dict,
    ) -> list[Tensor]:
        """The block's product through the layer chain where it applies (checked), else ``general()``.

        ``memo``: :meth:`_start_product`'s, see :meth:`ChainLinearization.matmat`.
        """
        chain = self._layer_chain
        if chain is None or self._chain_check.failed:
            return general()
        linearization = self._setup.cached(
            batch, "layer chain", lambda: chain.linearize(batch, self._setup.loss_func)
        )
        if linearization is None:
            return general()
        products = linearization.matmat(dict(zip(block, tangents)), memo)
        return self._chain_check.checked([products[index] for index in block], general)


def _blocks_of(block_sizes: Sequence[int], num_tensors: int) -> list[list[int]]:
    """Parameter indices of each diagonal block.

    Raises:
        ValueError: If the sizes are not positive integers summing to ``num_tensors``.
    """
    if isinstance(block_sizes, (str, bytes)) or not isinstance(block_sizes, Sequence):
        raise ValueError(f"block_sizes must be a list of integers, got {type(block_sizes).__name__}.")
    if any(isinstance(size, bool) or not isinstance(size, Integral) or size < 1 for size in block_sizes) or (
        sum(block_sizes) != num_tensors
    ):
        raise ValueError(
            f"block_sizes must be positive integers summing to the number of parameter tensors "
            f"({num_tensors}), got {list(block_sizes)}."
        )
    bounds = [0, *accumulate(int(size) for size in block_sizes)]
    return [list(range(start, stop)) for start, stop in pairwise(bounds)]
