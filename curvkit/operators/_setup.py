"""What every model-and-data operator holds: the model function, the loss, the batches.

Operators are composed from a :class:`ModelDataSetup` rather than inheriting its mechanics, so
the curvature operators (square, symmetric) and the Jacobians (rectangular) share it alike.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any
from warnings import warn

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from curvkit._engine import Batch, MiniBatchEngine
from curvkit._engine import check_deterministic as probe_determinism
from curvkit._engine.determinism import SharedPassProbe, random_modules_in_train_mode
from curvkit._engine.finite import MODEL_HINT, check_finite, named_inputs
from curvkit._engine.reduction import LocalReduction, reduction_for
from curvkit._layers.parameters import LayerMap, layer_map
from curvkit._model.autograd import require_autograd
from curvkit._model.differentiation import Linearization, ModelFunction
from curvkit._targets import check_target
from curvkit.losses import num_loss_terms
from curvkit.operators._cache import BatchCache

if TYPE_CHECKING:
    from curvkit.linear_operator import LinearOperator


def _loss_terms(loss_func: Callable, batch: Batch) -> float:
    check_target(loss_func, batch.y, batch.index)  # dtype and class axis: before they are counted
    return num_loss_terms(loss_func, batch.y, batch.size)


class ModelDataSetup:
    """Model function, loss and mini-batch engine of an operator, with an optional per-batch cache.

    Args:
        model_func: The network (an ``nn.Module``) or a callable ``X ↦ f(X)``.
        loss_func: The loss ``(prediction, target) ↦ scalar``, or ``None`` (Jacobians).
        params: The parameters ``θ``: a list of tensors or a dict of named tensors.
        data: Iterable of ``(X, y)`` mini-batches.
        progressbar: Show a progress bar per pass over the data.
        num_data: Number of samples ``N`` (computed with one pass if ``None``).
        batch_size_fn: Batch size of an ``X`` (required if ``X`` is a dict).
        cache_batches: Keep each batch's linearization (and output-space factors) in memory
            after its first use, so later products skip the forward pass. Costs memory of the
            order of the forward activations (plus their backward graph) of *all* batches; the
            Hessian keeps one graph for single vectors and one for columns if both are used.
        process_group: ``None`` (this process only), or a ``torch.distributed`` process group:
            then ``data`` is this rank's shard, products are summed over the ranks (every rank
            gets the full-data result), and the ranks must build the same operator
            (docs/distributed.md).
        signature: What the operator computes beyond model and loss (its class, ``fisher_type``,
            seed, ...), compared across the ranks of ``process_group``.
        probe_first_batch: Probe the first batch now: every parameter must reach the model's
            output (one forward pass and a walk of its graph), and :meth:`check_first_output`.
            ``False``: only the first batch's targets are checked now (their dtype and class
            axis: no forward pass), and :attr:`first_output` stays ``None``; the checks that need
            the model's output are left to the operator's first pass over the data, which calls
            :meth:`check_first_output` on the first output it computes. For an operator whose
            whole work is one pass (KFAC's factors), so that building it costs no forward pass;
            that pass must find every parameter used itself.

    Raises:
        ValueError: If ``loss_func`` is given but not callable, or the first batch's targets do
            not suit the loss, or its inputs, targets, model output or loss hold NaN or infinity.
        RuntimeError: Under ``torch.inference_mode()`` (here and in every product).
    """

    def __init__(
        self,
        model_func: Callable,
        loss_func: Callable | None,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        *,
        progressbar: bool = False,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        cache_batches: bool = False,
        process_group: object | None = None,
        signature: str = "",
        probe_first_batch: bool = True,
    ):
        self.reduction: LocalReduction = reduction_for(process_group)
        with self.reduction.failures_shared("building the operator"):
            self._build(
                model_func,
                loss_func,
                params,
                data,
                progressbar,
                num_data,
                batch_size_fn,
                cache_batches,
                probe_first_batch,
            )
        loss = f"{type(loss_func).__name__}({getattr(loss_func, 'reduction', '')})"
        shapes = [tuple(tensor.shape) for tensor in self.model.tensors]
        self.engine.join(f"{signature}; {loss}; {self.model.dtype}; parameters {shapes}")

    def _build(
        self,
        model_func: Callable,
        loss_func: Callable | None,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool,
        num_data: int | None,
        batch_size_fn: Callable | None,
        cache_batches: bool,
        probe_first_batch: bool,
    ) -> None:
        """The constructor's work on this rank (its failures are shared with the other ranks)."""
        if isinstance(model_func, DistributedDataParallel):  # the products differentiate the module
            model_func = model_func.module
        if isinstance(loss_func, type):
            raise ValueError(
                f"loss_func must be a loss instance such as {loss_func.__name__}(), got the class itself."
            )
        if loss_func is not None and not callable(loss_func):
            raise ValueError(f"loss_func must be callable, got {type(loss_func).__name__}.")
        require_autograd()
        self.model = ModelFunction(model_func, params)
        self.loss_func = loss_func
        self.engine = MiniBatchEngine(
            data,
            self.model.device,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            progressbar=progressbar,
            loss_terms=None if loss_func is None else partial(_loss_terms, loss_func),
            before_batch=self.before_batch,
            reduction=self.reduction,
        )
        self.cache_batches = cache_batches
        self.cache = BatchCache(self.model, cache_batches)
        self._checked_pass = -1
        self._probed_determinism = False
        self._first_output_checked = False
        self.output_checks: list[Callable[[Tensor], None]] = []
        """More checks of the first output, for :meth:`check_first_output` (an operator's own)."""
        first = next(iter(self.engine.batches()))
        self.first_targets = first.y
        self.first_output: Tensor | None = None
        if probe_first_batch:
            self.first_output = self.model.check_all_used(first.X)
            self.check_first_output(first, self.first_output)
        elif loss_func is not None:
            check_target(loss_func, first.y, first.index)

    @cached_property
    def layer_map(self) -> LayerMap:
        """Which parameters sit in which supported layer (:mod:`curvkit._layers`), built once.

        Empty for a model that is a plain callable (no modules to look into).
        """
        if not self.model.is_module:
            return LayerMap([], {})
        return layer_map(self.model.model_func, self.model.tensors)

    def check_first_output(self, batch: Batch, output: Tensor) -> None:
        """Check the first batch's ``output``, once (later calls return at once).

        The targets must suit the loss for this output, and the output and the loss must be
        finite (the engine checks the data itself); then :attr:`output_checks`. With
        ``check_deterministic`` the determinism probe checks every batch that way; this catches
        non-finite parameters without it, at one read back from the device.

        Raises:
            ValueError: If the targets do not suit the output, or it or the loss is not finite.
        """
        if self._first_output_checked:
            return
        with torch.no_grad():
            if self.loss_func is not None:
                check_target(self.loss_func, batch.y, batch.index, output.shape)
            check_finite(batch.index, self._model_tensors(batch, output), MODEL_HINT)
        for check in self.output_checks:
            check(output)
        self._first_output_checked = True

    def gradient_and_loss(self, reduction: str) -> tuple[list[Tensor], Tensor]:
        """The empirical risk ``L(θ)`` and its gradient (shaped like ``θ``), in one pass over the data.

        Batches are weighted as in the products (``K_b / K`` for a mean: the full data set's
        mean however it is split), and summed over the ranks of a process group.
        """

        def batch_result(batch: Batch) -> list[Tensor]:
            with torch.enable_grad():
                output = self.model(batch.X)
                self.check_first_output(batch, output)
                loss = self.loss_func(output, batch.y)
                gradient = torch.autograd.grad(
                    loss, self.model.tensors, allow_unused=True, materialize_grads=True
                )
            return [loss.detach(), *gradient]

        loss, *gradient = self.engine.sum_over_batches(batch_result, reduction, desc="gradient and loss")
        return gradient, loss

    def _model_tensors(self, batch: Batch, output: Tensor) -> dict[str, Tensor]:
        """The batch's model output and loss, by the names messages use.

        Without loss terms (every target ignored) the loss is 0/0 and the batch is skipped by
        the products, so its loss is left out.
        """
        if self.loss_func is None or batch.loss_terms == 0:
            return {"the model output": output}
        return {"the model output": output, "the loss": self.loss_func(output, batch.y)}

    def cached(self, batch: Batch, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered per batch when ``cache_batches`` is on (:class:`._cache.BatchCache`).

        :meth:`before_batch` empties it once per pass if the model changed since it was filled,
        so the operator follows the current model, as without the cache.
        """
        return self.cache.get(batch, key, compute)

    def before_batch(self) -> None:
        """Checks before a batch's product; those about the model once per pass over the data.

        The engine calls it before every batch of a product (its ``before_batch``), so that no
        product path has to.

        Once per pass (batch 0 may be skipped when it has no loss term): the parameters must be
        those the operator was built for (:meth:`ModelFunction.check_unchanged`); a model that
        passed the determinism probe must not have been switched to train mode since; and the
        cache is emptied if the model changed (:meth:`._cache.BatchCache.follow_model`).

        Raises:
            RuntimeError: Under ``torch.inference_mode()``, or if the model changed as above.
        """
        require_autograd()
        if self._checked_pass == self.engine.num_passes:
            return
        self._checked_pass = self.engine.num_passes
        self.model.check_unchanged()
        if self._probed_determinism and isinstance(self.model.model_func, torch.nn.Module):
            offenders = random_modules_in_train_mode(self.model.model_func)
            if offenders:
                raise RuntimeError(
                    "model_func changed to train mode since the operator was built: "
                    + "; ".join(offenders)
                    + ". Call model_func.eval() before multiplying."
                )
        self.cache.follow_model()

    def linearization(self, batch: Batch) -> Linearization:
        """The batch's output and Jacobian products (cached if requested)."""
        return self.cached(batch, "linearization", lambda: self.model.linearize(batch.X))

    def linearization_along(self, batch: Batch, tangents: list[Tensor]) -> tuple[Linearization, Tensor]:
        """The batch's linearization and ``J V`` for ``tangents`` (``[k, *θ_p.shape]``).

        Without the cache, both come from one forward pass where possible.
        """
        if self.cache_batches:
            linearization = self.linearization(batch)
            return linearization, linearization.jvp(tangents)
        return self.model.linearize_along(batch.X, tangents)

    def jvp(self, batch: Batch, tangents: list[Tensor]) -> Tensor:
        """``J V`` on the batch for ``tangents`` (``[k, *θ_p.shape]``), when no ``Jᵀ W`` follows."""
        if self.cache_batches:
            return self.linearization(batch).jvp(tangents)
        return self.model.jvp(batch.X, tangents)

    def hessian_product(
        self, batch: Batch, block_index: int, block: list[int], several_columns: bool
    ) -> Callable[[list[Tensor]], list[Tensor]]:
        """``V ↦ ∇²L_b V`` for the Hessian block ``block`` (parameter indices; cached if requested)."""
        return self.cached(
            batch,
            ("hessian", block_index, several_columns),
            lambda: self.model.hessian_product(batch.X, batch.y, self.loss_func, block, several_columns),
        )

    def batch_tensors(self, batch: Batch, output: Tensor | None = None) -> dict[str, Tensor]:
        """Tensors that must repeat across passes and be finite, for the determinism probe.

        ``output``: the batch's model output where the caller computed it already.

        Raises:
            ValueError: If the batch's targets do not suit the loss (for its output's shape).
        """
        output = self.model(batch.X) if output is None else output
        if self.loss_func is not None:
            check_target(self.loss_func, batch.y, batch.index, output.shape)
        y = {} if batch.y is None else {"the target y": batch.y}
        return {**named_inputs(batch.X), **y, **self._model_tensors(batch, output)}

    def shared_pass_probe(self) -> SharedPassProbe:
        """The determinism probe of a computation that passes over the data once anyway.

        Its first pass runs now; the computation records each batch's tensors
        (:meth:`batch_tensors` with its output) and calls ``finish()`` after its pass.
        """
        self._probed_determinism = True
        with self.reduction.failures_shared("the determinism probe"):
            return SharedPassProbe(self.engine, self.model.model_func, self.batch_tensors)

    def check_deterministic(self, operator: LinearOperator | None = None) -> None:
        """Run the determinism probe (:mod:`curvkit._engine.determinism`); no operator: model, data.

        With an ``operator`` (whose products the probe compares), products are also checked to
        take the same derivatives in forward and reverse mode, on the first batch
        (:meth:`ModelFunction.check_forward_mode`). If its blocks of columns disagree with its
        single vectors (a wrong batching rule under ``torch.func.vmap``), it multiplies one column
        at a time from then on (``max_columns = 1``), with a warning.
        """
        with self.reduction.failures_shared("the determinism probe"):
            self._check_deterministic(operator)

    def _check_deterministic(self, operator: LinearOperator | None) -> None:
        self._probed_determinism = True
        if operator is not None and self.model.is_module and self.model.forward_mode_available:
            first = next(iter(self.engine.batches()), None)
            if first is not None:
                self.model.check_forward_mode(first.X)
        columns_agree = probe_determinism(
            self.engine,
            self.model.model_func,
            self.batch_tensors,
            None if operator is None else operator._matmat,
            self.model.layout.dim,
            self.model.dtype,
            self.model.device,
        )
        if not columns_agree:
            operator.max_columns = 1
            warn(
                f"{type(operator).__name__}: on this model, products with several columns (under "
                "torch.func.vmap) differ from products with single vectors, so a batching rule of one "
                "of its operations is wrong. The operator multiplies one column at a time from now on "
                "(max_columns=1), which is slower.",
                UserWarning,
                stacklevel=3,
            )


class GradientAndLoss:
    """``gradient_and_loss()`` for an operator of a loss (its ``_setup`` and ``_reduction``)."""

    _setup: ModelDataSetup
    _reduction: str

    def gradient_and_loss(self) -> tuple[list[Tensor], Tensor]:
        """The gradient and value of the empirical risk on the operator's data (as curvlinops offers them).

        One pass over the data, at the current parameters.

        Returns:
            The gradient, one tensor per parameter (in ``params``' order), and the loss (0-d).
        """
        return self._setup.gradient_and_loss(self._reduction)
