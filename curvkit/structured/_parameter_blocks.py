"""What KFAC's and EKFAC's algebra share: parameters, blocks, the block-diagonal, and state dicts.

A subclass says how a block is checked (:meth:`ParameterBlocks._checked_block`) and which operator it
is (:meth:`ParameterBlocks._block_operator`); products, ``to_dense`` and closed forms go to the
:class:`~curvkit.structured.BlockDiagonalLinearOperator` of those operators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from curvkit._layout import TensorListLayout
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms
from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator
from curvkit.structured.blocks import Placement


def _parameter_facts(
    params: Sequence[Any], dtype: torch.dtype | None, device: torch.device | str | None, blocks: Sequence[Any]
) -> tuple[list[torch.Size], torch.dtype, torch.device]:
    """Shapes, dtype and device from ``params`` (tensors, or shapes with the factors' dtype and device)."""
    if isinstance(params, (Tensor, str)) or not isinstance(params, Sequence) or not params:
        raise TypeError("params must be a non-empty list of tensors (or of their shapes).")
    if all(isinstance(p, Tensor) for p in params):
        dtypes, devices = {p.dtype for p in params}, {p.device for p in params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"params must share one dtype and device, got {sorted(map(str, dtypes | devices))}."
            )
        if not next(iter(dtypes)).is_floating_point:
            raise TypeError(f"params must be floating-point tensors, got {next(iter(dtypes))}.")
        return [p.shape for p in params], dtype or dtypes.pop(), torch.device(device or devices.pop())
    try:
        shapes = [torch.Size(p) for p in params]
    except TypeError as error:
        raise TypeError(
            "params must be a non-empty list of tensors or of shapes (sequences of ints)."
        ) from error
    reference = next((t for block in blocks for t in _tensors(block)), None)
    if reference is None and dtype is None:
        raise ValueError("params are shapes and there is no factor to take a dtype from: pass dtype.")
    return (
        shapes,
        dtype or reference.dtype,
        torch.device(device if device is not None else reference.device if reference is not None else "cpu"),
    )


def _tensors(block: Any) -> list[Tensor]:
    """A block description's tensors (none for anything else: the blocks are checked later)."""
    if not is_dataclass(block):
        return []
    return [getattr(block, f.name) for f in fields(block) if isinstance(getattr(block, f.name), Tensor)]


class ParameterBlocks(ClosedForms, LinearOperator):
    """A symmetric PSD block-diagonal operator over parameters, from block descriptions.

    Args:
        params: The parameters (tensors: only their shapes, dtype and device are read), or their
            shapes (then dtype and device are the first factor's unless given).
        blocks: One description per block (the subclass's ``BLOCK`` type); together they must
            cover every parameter once.
        dtype: The dtype to work in (default: the parameters'); factors are converted to it.
        device: The device to work on (default: the parameters').
    """

    BLOCK: ClassVar[type]
    _FORMAT: ClassVar[str]
    _LATER_FIELDS: ClassVar[frozenset[str]] = frozenset()
    """Fields of ``BLOCK`` added after its format was fixed: a state dict saved before lacks them."""

    def __init__(
        self,
        params: Sequence[Tensor] | Sequence[Sequence[int]],
        blocks: Sequence[Any],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        if isinstance(blocks, self.BLOCK) or not isinstance(blocks, Sequence):
            raise TypeError(f"blocks must be a list of {self.BLOCK.__name__}, got {type(blocks).__name__}.")
        shapes, dtype, device = _parameter_facts(params, dtype, device, blocks)
        if not dtype.is_floating_point or dtype.is_complex:
            raise TypeError(f"dtype must be a real floating-point dtype, got {dtype}.")
        layout = TensorListLayout(shapes)
        super().__init__(
            (layout.dim, layout.dim),
            dtype=dtype,
            device=device,
            psd=True,
            in_layout=layout,
            out_layout=layout,
        )
        self._install(blocks)

    # ------------------------------------------------------------------- subclass contract
    def _checked_block(self, block: Any, where: str) -> tuple[Any, Placement]:
        """The block with its tensors checked and in the operator's dtype and device, and its placement."""
        raise NotImplementedError

    def _block_operator(self, block: Any, where: Placement) -> LinearOperator:
        raise NotImplementedError

    # ------------------------------------------------------------------- blocks
    def _install(self, blocks: Sequence[Any]) -> None:
        checked = []
        for index, block in enumerate(blocks):
            if not isinstance(block, self.BLOCK):
                raise TypeError(
                    f"blocks[{index}] must be a {self.BLOCK.__name__}, got {type(block).__name__}."
                )
            checked.append(self._checked_block(block, f"blocks[{index}]"))
        self._blocks = tuple(block for block, _ in checked)
        self._placements = tuple(where for _, where in checked)
        self._operator = BlockDiagonalLinearOperator(
            self.in_layout,
            [(where.params, self._block_operator(block, where)) for block, where in checked],
        )

    def _converted(self, tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor.detach().to(dtype=self.dtype, device=self.device)

    @property
    def blocks(self) -> tuple[Any, ...]:
        """The blocks, as checked (tensors in the operator's dtype and device; factors symmetrized)."""
        return self._blocks

    # ------------------------------------------------------------------- delegation
    def _matmat(self, X: Tensor) -> Tensor:
        return self._operator.matmat(X)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        return self._operator.to_dense(chunk_size)

    def trace(self) -> Tensor:
        return self._operator.trace()

    def slogdet(self) -> tuple[Tensor, Tensor]:
        return self._operator.slogdet()

    def frobenius_norm(self) -> Tensor:
        return self._operator.frobenius_norm()

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The blocks as plain Python containers of tensors (references, not copies), for ``torch.save``.

        ``torch.load(file, weights_only=True)`` reads it back in another process.
        """
        return {
            "format": self._FORMAT,
            "shapes": [list(shape) for shape in self.in_layout.shapes],
            "blocks": [_block_state(block) for block in self._blocks],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Replace the blocks by those of ``state_dict`` (converted to this operator's dtype and device).

        Shape, dtype, device and tags stay as they are; operators built from this one before
        (an inverse, say) keep the blocks they were built from.

        Raises:
            ValueError: If ``state_dict`` is not this class's, or is of other parameter shapes.
        """
        blocks = self._blocks_of(state_dict)
        shapes = [list(shape) for shape in self.in_layout.shapes]
        if [list(shape) for shape in state_dict["shapes"]] != shapes:
            raise ValueError(
                f"state_dict is of parameters of shapes {state_dict['shapes']}, this operator's are {shapes}."
            )
        self._install(blocks)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, Any],
        params: Sequence[Tensor] | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> ParameterBlocks:
        """Build the operator from ``state_dict``; ``params`` default to the stored shapes."""
        blocks = cls._blocks_of(state_dict)
        return cls(state_dict["shapes"] if params is None else params, blocks, dtype=dtype, device=device)

    @classmethod
    def _blocks_of(cls, state_dict: Any) -> list[Any]:
        if not isinstance(state_dict, dict) or state_dict.get("format") != cls._FORMAT:
            found = state_dict.get("format") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                f"state_dict must be a {cls.__name__}'s state_dict (format {cls._FORMAT!r}), got {found!r}."
            )
        names = {f.name for f in fields(cls.BLOCK)}
        blocks = []
        for index, entry in enumerate(state_dict["blocks"]):
            if not set(entry) <= names or not names - set(entry) <= cls._LATER_FIELDS:
                raise ValueError(
                    f"state_dict block {index} has entries {sorted(entry)}, expected {sorted(names)}."
                )
            blocks.append(cls.BLOCK(**{**entry, "params": tuple(entry["params"])}))
        return blocks


def _block_state(block: Any) -> dict[str, Any]:
    return {
        f.name: list(block.params) if f.name == "params" else getattr(block, f.name) for f in fields(block)
    }
