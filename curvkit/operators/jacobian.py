"""The Jacobian of the model output with respect to the parameters, and its transpose."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import Tensor

from curvkit._layout import TensorListLayout
from curvkit.linear_operator import LinearOperator, TransposedLinearOperator
from curvkit.operators._setup import ModelDataSetup


class JacobianLinearOperator(LinearOperator):
    r"""The model's Jacobian ``J_θ f`` on a data set, an ``NC × D`` matrix.

    For a model ``f(x, θ): ℝᴹ × ℝᴰ → ℝᶜ`` and data ``{(x_n, y_n)}``,

    .. math::
        [J_\theta f]_{(n, c), d} = \frac{\partial [f(x_n, \theta)]_c}{\partial \theta_d},

    with rows ordered batch by batch and, within a batch, by the flattened output (sample
    major). ``J V`` runs in forward mode (dual numbers for one vector, ``vmap``-ed
    ``torch.func.jvp`` for columns; reverse mode where forward-mode derivatives are missing, and
    for single vectors through a cached linearization of a model without convolutions),
    ``Jᵀ W`` is a backward pass, batched over columns. The data must come in a deterministic
    order.

    Args:
        model_func: The network (``nn.Module``) or a callable ``X ↦ f(X)``.
        params: Parameters ``θ`` (list of tensors or dict of named tensors).
        data: Iterable of ``(X, y)`` mini-batches (``y`` is not used).
        progressbar: Show a progress bar during products. Default: ``False``.
        check_deterministic: Probe that model and data are deterministic. Default: ``True``.
        num_data: Number of samples ``N`` (computed with one pass if ``None``).
        batch_size_fn: Maps ``X`` to its batch size; required if ``X`` is a dict.
        cache_batches: Keep each batch's linearization after the first product.
        process_group: ``None`` (default: this process only), or a ``torch.distributed`` process
            group: then ``data`` is this rank's shard, ``J V`` is gathered from all ranks (rows
            of lower ranks first) and ``Jᵀ W`` summed over them (docs/distributed.md).

    Raises:
        ValueError: For invalid arguments, naming the argument.
        RuntimeError: If the determinism probe fails.
    """

    def __init__(
        self,
        model_func: Callable,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        cache_batches: bool = False,
        process_group: object | None = None,
    ):
        self._setup = ModelDataSetup(
            model_func,
            None,
            params,
            data,
            progressbar=progressbar,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            cache_batches=cache_batches,
            process_group=process_group,
            signature=type(self).__name__,
        )
        model, engine = self._setup.model, self._setup.engine
        first_output = self._setup.first_output
        self._outputs_per_sample = first_output[0].numel() if first_output.ndim > 0 else 1
        super().__init__(
            (engine.num_data * self._outputs_per_sample, model.layout.dim),
            dtype=model.dtype,
            device=model.device,
            in_layout=model.layout,
            out_layout=TensorListLayout([(engine.num_data, *first_output.shape[1:])]),
        )
        if check_deterministic:
            self._setup.check_deterministic(self)

    def _agreed_width(self, width: int) -> int:
        return self._setup.reduction.minimum(width, "the memory budget's block width")

    def _matmat(self, X: Tensor) -> Tensor:
        tangents = self._setup.model.layout.columns_to_list(X)

        def batch_rows(batch):
            jvp = self._setup.jvp(batch, tangents)  # [k, *output.shape]
            if jvp[0].numel() != batch.size * self._outputs_per_sample:
                raise ValueError(
                    f"batch {batch.index}: model_func gives {jvp[0].numel() // max(batch.size, 1)} "
                    f"outputs per sample, the first batch {self._outputs_per_sample}; the Jacobian "
                    "needs the same number for every sample."
                )
            return jvp.reshape(jvp.shape[0], -1).T

        return self._setup.engine.concatenate_over_batches(batch_rows, desc=type(self).__name__, inputs=X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        layout = self._setup.model.layout
        offset = self._setup.engine.sample_offset * self._outputs_per_sample  # this shard's rows

        def batch_product(batch):
            nonlocal offset
            linearization = self._setup.linearization(batch)
            rows = batch.size * self._outputs_per_sample
            cotangents = X[offset : offset + rows].T.reshape(X.shape[1], *linearization.output.shape)
            offset += rows
            return linearization.vjp(cotangents)

        rows = X.new_empty(X.shape[1], layout.dim)  # accumulated in place, as for curvature products
        self._setup.engine.sum_over_batches(
            batch_product, "sum", desc=f"{type(self).__name__}ᵀ", out=layout.split_rows(rows), inputs=X
        )
        return rows.T


class TransposedJacobianLinearOperator(TransposedLinearOperator):
    r"""The transposed Jacobian ``(J_θ f)ᵀ``, a ``D × NC`` matrix (see :class:`JacobianLinearOperator`).

    .. math::
        [(J_\theta f)^\top]_{d, (n, c)} = \frac{\partial [f(x_n, \theta)]_c}{\partial \theta_d}

    Arguments as for :class:`JacobianLinearOperator`.
    """

    def __init__(
        self,
        model_func: Callable,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        cache_batches: bool = False,
        process_group: object | None = None,
    ):
        super().__init__(
            JacobianLinearOperator(
                model_func,
                params,
                data,
                progressbar,
                check_deterministic,
                num_data=num_data,
                batch_size_fn=batch_size_fn,
                cache_batches=cache_batches,
                process_group=process_group,
            )
        )
