r"""A block-diagonal operator over a parameter layout: ``P · BlockDiag(B_1, ..., B_L) · Pᵀ``.

Each block acts on the concatenation of the flattenings of one or more parameters, which may sit
anywhere in the parameter list (a layer's weight and bias need not be neighbours); ``P`` is the
permutation from the blocks' order to the list's. KFAC is this with Kronecker blocks, its inverse
the same with the blocks inverted, EKFAC the same with eigenvalue-corrected blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit._layout import TensorListLayout
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms, as_result, float64_sum


def _common(values: list, what: str) -> object:
    concrete = {value for value in values if value is not None}
    if len(concrete) > 1:
        raise ValueError(f"blocks must share one {what}, got {sorted(map(str, concrete))}.")
    return concrete.pop() if concrete else None


class BlockDiagonalLinearOperator(ClosedForms, LinearOperator):
    r"""``P · BlockDiag(B_1, ..., B_L) · Pᵀ`` on the flattened parameters of ``layout``.

    Every parameter belongs to exactly one block; block ``l`` acts on the concatenation of its
    parameters' flattenings, in the order it lists them. Products take each block's rows of the
    ``[D, k]`` input (a view where its parameters are neighbours in that order, a copy of their rows
    otherwise) and write the block's result into the same rows of the output: nothing of size
    ``D²`` is formed. Closed forms sum over blocks: ``tr = Σ_l tr B_l``,
    ``log|det| = Σ_l log|det B_l|``, ``‖·‖_F² = Σ_l ‖B_l‖_F²`` (each block must provide them).

    Args:
        layout: The parameters' shapes (a :class:`~curvkit._layout.TensorListLayout` or a sequence
            of shapes); products accept and return lists of parameter-shaped tensors.
        blocks: Pairs ``(parameter positions, square operator)``.

    Raises:
        ValueError: If the blocks do not partition the parameters, a block's size differs from
            its parameters' total size, or the blocks differ in dtype or device.

    Example:
        >>> import torch
        >>> from curvkit.structured import DiagonalLinearOperator
        >>> blocks = [((1,), DiagonalLinearOperator(torch.tensor([2.0]))),
        ...           ((0, 2), DiagonalLinearOperator(torch.tensor([3.0, 4.0, 5.0])))]
        >>> B = BlockDiagonalLinearOperator([(2,), (), (1,)], blocks)
        >>> B @ torch.ones(4)
        tensor([3., 4., 2., 5.])
    """

    def __init__(
        self,
        layout: TensorListLayout | Sequence[Sequence[int]],
        blocks: Sequence[tuple[Sequence[int], LinearOperator]],
    ):
        layout = layout if isinstance(layout, TensorListLayout) else TensorListLayout(layout)
        offsets = [0]
        for numel in layout.numels:
            offsets.append(offsets[-1] + numel)
        seen: dict[int, int] = {}
        checked = []
        for index, (params, operator) in enumerate(blocks):
            params = tuple(as_integer(p, f"blocks[{index}] parameter position", minimum=0) for p in params)
            if not params:
                raise ValueError(f"blocks[{index}] lists no parameters.")
            for position in params:
                if position >= len(layout.shapes):
                    raise ValueError(
                        f"blocks[{index}] lists parameter {position}, but there are {len(layout.shapes)}."
                    )
                if position in seen:
                    raise ValueError(
                        f"Parameter {position} is in blocks[{seen[position]}] and blocks[{index}]."
                    )
                seen[position] = index
            size = sum(layout.numels[p] for p in params)
            if operator.shape != (size, size):
                raise ValueError(
                    f"blocks[{index}] must be square of size {size} (its parameters' total), got "
                    f"shape {operator.shape}."
                )
            checked.append((params, operator))
        missing = sorted(set(range(len(layout.shapes))) - set(seen))
        if missing:
            raise ValueError(f"Parameters {missing} are in no block; every parameter needs one.")
        operators = [operator for _, operator in checked]
        super().__init__(
            (layout.dim, layout.dim),
            dtype=_common([op.dtype for op in operators], "dtype"),
            device=_common([op.device for op in operators], "device"),
            symmetric=all(op.is_symmetric for op in operators),
            psd=all(op.is_psd for op in operators),
            in_layout=layout,
            out_layout=layout,
        )
        self.blocks = tuple(checked)
        self._ranges = tuple(
            _merged_ranges([(offsets[p], offsets[p + 1]) for p in params]) for params, _ in checked
        )

    def _blockwise(self, X: Tensor, transpose: bool) -> Tensor:
        """Each block on its rows of ``X``, handed over as columns stored column by column.

        ``X`` is transposed once into ``[k, D]`` (not at all if it is stored column by column);
        a block's input is a view of that (a copy only if its parameters are not neighbours in
        its order), so Kronecker blocks multiply their ``[k, out, in]`` stack without a copy, and
        each result is written into ``[k, D]``, returned transposed.
        """
        columns = X.T if X.stride(0) == 1 else X.T.contiguous()
        result = X.new_empty(X.shape[1], self.shape[0])
        for (_, operator), ranges in zip(self.blocks, self._ranges):
            if len(ranges) == 1:
                block_input = columns[:, ranges[0][0] : ranges[0][1]]
            else:
                block_input = torch.cat([columns[:, a:b] for a, b in ranges], dim=1)
            block_input = block_input.T
            block_result = (operator.rmatmat(block_input) if transpose else operator.matmat(block_input)).T
            start = 0
            for a, b in ranges:
                result[:, a:b] = block_result[:, start : start + b - a]
                start += b - a
        return result.T

    def _matmat(self, X: Tensor) -> Tensor:
        return self._blockwise(X, transpose=False)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._blockwise(X, transpose=True)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """The matrix, assembled from the blocks' dense matrices (no product with ``D`` columns)."""
        dtype = self.dtype or torch.get_default_dtype()
        result = torch.zeros(self.shape, dtype=dtype, device=self.device)
        for (_, operator), ranges in zip(self.blocks, self._ranges):
            index = torch.cat([torch.arange(a, b, device=result.device) for a, b in ranges])
            result[index.unsqueeze(1), index.unsqueeze(0)] = operator.to_dense(chunk_size).to(dtype)
        return result

    def _each(self, closed_form: str) -> list:
        """Every block's ``closed_form()``.

        Raises:
            TypeError: If a block has none (a dense or curvature operator).
        """
        values = []
        for index, (_, operator) in enumerate(self.blocks):
            method = getattr(operator, closed_form, None)
            if method is None:
                raise TypeError(
                    f"blocks[{index}] ({type(operator).__name__}) has no closed-form {closed_form}(), "
                    "which a block diagonal's needs from every block."
                )
            values.append(method())
        return values

    def trace(self) -> Tensor:
        return as_result(float64_sum(self._each("trace")), self)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        signs, logs = zip(*self._each("slogdet")) if self.blocks else ((), ())
        sign = torch.stack([s.to(torch.float64) for s in signs]).prod() if signs else torch.tensor(1.0)
        return as_result(sign, self), as_result(float64_sum(list(logs)), self)

    def frobenius_norm(self) -> Tensor:
        squares = [norm.to(torch.float64) ** 2 for norm in self._each("frobenius_norm")]
        return as_result(float64_sum(squares).sqrt(), self)


def _merged_ranges(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Row ranges in the block's order, neighbours merged (one range: the block's rows are a view)."""
    merged: list[tuple[int, int]] = []
    for start, stop in ranges:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return tuple(merged)
