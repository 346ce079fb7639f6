"""Small operators that curvlinops' documentation examples import from ``curvlinops.examples``.

Each is one of curvkit's operators under the name and signature those examples use, so that
code written for curvlinops runs after changing the import.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from curvkit._boundary import as_tensor
from curvkit._layout import TensorListLayout
from curvkit.linear_operator import DenseLinearOperator, LinearOperator
from curvkit.structured.identity import IdentityLinearOperator as _Identity


class TensorLinearOperator(DenseLinearOperator):
    """A 2-D tensor ``A`` as an operator; symmetric where ``A`` is square and close to ``Aᵀ``.

    Args:
        A: ``[m, n]``.

    Raises:
        ValueError: If ``A`` is not 2-dimensional.
    """

    def __init__(self, A: Tensor):
        A = as_tensor(A, None, None, name="A")
        if A.ndim != 2:
            raise ValueError(f"A must be a 2-dimensional tensor, got shape {list(A.shape)}.")
        square = A.shape[0] == A.shape[1]
        super().__init__(A, symmetric=square and bool(torch.allclose(A, A.T)))


class OuterProductLinearOperator(LinearOperator):
    r"""The low-rank symmetric matrix :math:`\sum_i c_i \mathbf{a}_i \mathbf{a}_i^\top`.

    That is :math:`\mathbf{A}\,\mathrm{diag}(\mathbf{c})\,\mathbf{A}^\top`, multiplied as
    ``A (c ⊙ (Aᵀ X))``: ``O(D K)`` per column, the ``D × D`` matrix never formed.

    Args:
        c: Coefficients ``[K]``.
        A: The vectors ``a_i`` as columns, ``[D, K]`` (``c`` is taken in its dtype and device).

    Raises:
        ValueError: If the shapes do not fit.
    """

    def __init__(self, c: Tensor, A: Tensor):
        A = as_tensor(A, None, None, name="A")
        c = as_tensor(c, A.dtype, A.device, name="c")
        if A.ndim != 2 or c.shape != (A.shape[1],):
            raise ValueError(
                f"A must be [D, K] and c [K], got A of shape {list(A.shape)} and c of {list(c.shape)}."
            )
        super().__init__((A.shape[0], A.shape[0]), dtype=A.dtype, device=A.device, symmetric=True)
        self.coefficients, self.vectors = c, A

    def _matmat(self, X: Tensor) -> Tensor:
        return self.vectors @ (self.coefficients.unsqueeze(1) * (self.vectors.T @ X))


class IdentityLinearOperator(_Identity):
    """The identity on a space of tensor lists (``curvlinops.examples``' signature).

    Unlike :class:`curvkit.IdentityLinearOperator` (``dim, dtype, device``), it takes the shapes
    of the tensors its inputs and outputs are lists of, so that it also multiplies such lists.

    Args:
        shape: The tensors' shapes, e.g. ``[p.shape for p in params]`` (curvlinops' name).
        device: Its device.
        dtype: Its dtype.
    """

    def __init__(self, shape: Sequence[Sequence[int]], device: torch.device | str, dtype: torch.dtype):
        layout = TensorListLayout(shape)
        super().__init__(layout.dim, dtype=dtype, device=device)
        self._in_layout = self._out_layout = layout
