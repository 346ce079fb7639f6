"""The common base of the square curvature operators in parameter space."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from curvkit._engine import Batch
from curvkit._pages import empty_block
from curvkit.linear_operator import LinearOperator
from curvkit.losses import reduction_of
from curvkit.operators._setup import GradientAndLoss, ModelDataSetup


class CurvatureLinearOperator(GradientAndLoss, LinearOperator):
    """A ``D × D`` curvature matrix of the empirical risk ``L(θ) = c Σ_n ℓ(f_θ(x_n), y_n)``.

    ``c = 1/K`` for ``reduction='mean'``, ``K`` the number of terms the mean averages over
    (samples; output entries for MSE / BCE; kept positions or their class weights for
    cross-entropy: :func:`curvkit.losses.num_loss_terms`), and ``c = 1`` for ``'sum'``. The
    matrix is a weighted
    sum over mini-batches (see :class:`curvkit._engine.MiniBatchEngine`), so it does not depend
    on how the data is split into batches. Subclasses implement the product of one batch's
    matrix with ``k`` parameter-space vectors, :meth:`_batch_matmat`.

    ``f(X; θ)`` denotes the network with parameters ``θ`` mapping a mini-batch input ``X`` to
    predictions, and ``ℓ(p, y)`` maps predictions and labels to a loss.

    Args:
        model_func: The network: an ``nn.Module`` (single vectors through ``torch.autograd``,
            several columns through ``torch.func``, see :mod:`curvkit._model.differentiation`) or a callable
            ``X ↦ f(X)`` closing over ``params`` (through ``torch.autograd``).
        loss_func: Loss criterion mapping predictions and mini-batch labels to a scalar;
            its ``reduction`` (``'mean'`` or ``'sum'``) defines ``c``. Required: ``None``,
            which the reference's signature admits, is refused (these matrices are those of
            a loss; the Jacobians take no loss).
        params: Differentiable parameters ``θ`` used by ``model_func``: a list of tensors or
            a dict of named tensors. The matrix follows their order, each flattened.
        data: Source of mini-batches ``(X, y)``, e.g. a list or a ``DataLoader``. ``X`` may
            be a tensor or a dict of tensors (then pass ``batch_size_fn``).
        progressbar: Show a progress bar during products. Default: ``False``.
        check_deterministic: Probe that model and data are deterministic (no shuffling, no
            augmentation, no dropout, no BatchNorm in train mode). Default: ``True``. A
            safeguard; only turn it off if you know what you are doing.
        shape: Shape of the matrix; ``None`` means ``(D, D)``. Given for compatibility and
            checked against ``D``.
        num_data: Number of samples ``N``; computed with one pass over ``data`` if ``None``.
        batch_size_fn: Maps ``X`` to its batch size. Required if ``X`` is a dict.
        cache_batches: Keep what each batch's products need (its linearization and
            output-space factors) after the first product, so that repeated products
            (Lanczos, CG, sketches, ``to_dense``) skip the forward pass. Costs memory of the
            order of all batches' activations and their backward graph. Default: ``False``.
        process_group: ``None`` (default: this process only), or a ``torch.distributed`` process
            group such as ``torch.distributed.group.WORLD``: then ``data`` is this rank's shard
            and every product is summed over the ranks, so that each rank gets the full-data
            matrix's (docs/distributed.md).

    Raises:
        ValueError: For invalid arguments; each message names the argument.
        RuntimeError: If the determinism probe fails.
    """

    @classmethod
    def _is_psd(cls, loss_func: Callable) -> bool:
        """Whether the matrix is positive semi-definite by construction for this loss."""
        return False

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
        cache_batches: bool = False,
        process_group: object | None = None,
    ):
        if loss_func is None:
            raise ValueError(f"loss_func is required for {type(self).__name__}; got None.")
        self._reduction = reduction_of(loss_func)
        self._setup = ModelDataSetup(
            model_func,
            loss_func,
            params,
            data,
            progressbar=progressbar,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            cache_batches=cache_batches,
            process_group=process_group,
            signature=self._signature(),
        )
        layout = self._setup.model.layout
        if shape is not None and tuple(shape) != (layout.dim, layout.dim):
            raise ValueError(
                f"shape must be ({layout.dim}, {layout.dim}) for these params, got {tuple(shape)}."
            )
        super().__init__(
            (layout.dim, layout.dim),
            dtype=self._setup.model.dtype,
            device=self._setup.model.device,
            symmetric=True,
            psd=self._is_psd(loss_func),
            in_layout=layout,
            out_layout=layout,
        )
        if check_deterministic:
            self._setup.check_deterministic(self)

    def _signature(self) -> str:
        """What this operator computes beyond model and loss, compared across ranks."""
        return type(self).__name__

    def _agreed_width(self, width: int) -> int:
        return self._setup.reduction.minimum(width, "the memory budget's block width")

    @property
    def num_data(self) -> int:
        """Total number of samples ``N``."""
        return self._setup.engine.num_data

    def _start_product(self) -> Any:
        """Per-product state handed to every :meth:`_batch_matmat` (e.g. a random generator)."""
        return None

    def _batch_matmat(self, batch: Batch, tangents: list[Tensor], state: Any) -> list[Tensor]:
        """The batch matrix times ``V`` (``[k, *θ_p.shape]`` per parameter), in the same layout."""
        raise NotImplementedError

    def _matmat(self, X: Tensor) -> Tensor:
        layout = self._setup.model.layout
        tangents = layout.columns_to_list(X)
        state = self._start_product()
        # accumulated in place in the rows of one [k, D] matrix: no concatenation at the end
        rows = empty_block((X.shape[1], layout.dim), X.dtype, X.device)
        self._setup.engine.sum_over_batches(
            lambda batch: self._batch_matmat(batch, tangents, state),
            self._reduction,
            desc=type(self).__name__,
            out=layout.split_rows(rows),
            inputs=X,
        )
        return rows.T
