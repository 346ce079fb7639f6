"""Layout of a vector space that is a list of tensors, such as a network's parameters.

A curvature matrix acts on the flattened, concatenated parameters
``θ = (vec θ_1, ..., vec θ_P) ∈ ℝᴰ``. This module maps between that flat layout and the
list-of-tensors layout that ``torch.func`` works in, in exactly one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from curvkit._pages import empty_block

_TRANSPOSE_BLOCK = 8192
"""Rows per block when transposing ``[D, k]`` (8192 rows of 16 floats: 512 KiB, in cache)."""


class TensorListLayout:
    """Map between ``[D, k]`` matrices and lists of tensors with shapes ``shapes``.

    Two list conventions exist: the user-facing one, with a trailing column axis
    (``[*shape]`` for a vector, ``[*shape, k]`` for a matrix, mirroring ``[D]`` and
    ``[D, k]``), and the ``vmap``-facing one with a leading column axis ``[k, *shape]``.

    Args:
        shapes: Shapes of the tensors in the list.
    """

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self.shapes = tuple(torch.Size(shape) for shape in shapes)
        self.numels = tuple(shape.numel() for shape in self.shapes)
        self.dim = sum(self.numels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorListLayout) and self.shapes == other.shapes

    def __hash__(self) -> int:
        return hash(self.shapes)

    def columns_to_list(self, matrix: Tensor) -> list[Tensor]:
        """Split ``[D, k]`` into contiguous tensors of shape ``[k, *shape]`` (``vmap`` layout).

        Contiguous, so that each column has its parameter's strides: ``torch.func.jvp`` would
        otherwise copy every column into a fresh zeroed tensor once per batch. Each block is
        transposed in slices of rows that stay in cache, not by ``.T.contiguous()``
        (design notes, "Measurements behind the code").
        """
        num_columns = matrix.shape[1]
        tensors = []
        for block, shape in zip(matrix.split(self.numels), self.shapes):
            if block.T.is_contiguous():  # rows of a contiguous [k, D] matrix: a view
                tensors.append(block.T.view(num_columns, *shape))
                continue
            rows = empty_block((num_columns, block.shape[0]), block.dtype, block.device)
            if num_columns == 1 or block.stride(0) == 1:  # rows of a [k, D] matrix, or one column
                rows.copy_(block.T)
            else:
                for start in range(0, block.shape[0], _TRANSPOSE_BLOCK):
                    rows[:, start : start + _TRANSPOSE_BLOCK].copy_(block[start : start + _TRANSPOSE_BLOCK].T)
            tensors.append(rows.view(num_columns, *shape))
        return tensors

    def split_rows(self, rows: Tensor) -> list[Tensor]:
        """Views ``[k, *shape]`` of the parameters' blocks of a ``[k, D]`` tensor."""
        return [
            block.view(rows.shape[0], *shape)
            for block, shape in zip(rows.split(self.numels, dim=1), self.shapes)
        ]

    def flatten_user_list(self, tensors: Sequence[Tensor], name: str) -> tuple[Tensor, bool]:
        """Turn a user list (``[*shape]`` or ``[*shape, k]`` entries) into ``[D, k]``.

        Returns:
            The ``[D, k]`` matrix and whether the entries were vectors (no column axis).

        Raises:
            ValueError: If the number of tensors or their shapes do not match the layout.
        """
        if len(tensors) != len(self.shapes):
            raise ValueError(f"{name} must be a list of {len(self.shapes)} tensors, got {len(tensors)}.")
        is_vector = tuple(tensors[0].shape) == tuple(self.shapes[0])
        trailing = () if is_vector else tuple(tensors[0].shape[-1:])
        for index, (tensor, shape) in enumerate(zip(tensors, self.shapes)):
            if tuple(tensor.shape) != (*shape, *trailing):
                raise ValueError(
                    f"{name}[{index}] must have shape {tuple(shape)} or {(*shape, 'k')} "
                    f"consistently across the list, got {tuple(tensor.shape)}."
                )
        num_columns = 1 if is_vector else trailing[0]
        matrix = torch.cat(
            [tensor.reshape(numel, num_columns) for tensor, numel in zip(tensors, self.numels)]
        )
        return matrix, is_vector

    def unflatten_to_user_list(self, matrix: Tensor, is_vector: bool) -> list[Tensor]:
        """Inverse of :meth:`flatten_user_list`."""
        return [
            block.reshape(shape) if is_vector else block.reshape(*shape, matrix.shape[1])
            for block, shape in zip(matrix.split(self.numels), self.shapes)
        ]
