"""The Hessian of the loss with respect to an intermediate feature of the network."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.func import grad, vjp, vmap

from curvkit._engine import Batch, MiniBatchEngine
from curvkit._engine import check_deterministic as probe_determinism
from curvkit._engine.finite import MODEL_HINT, check_finite
from curvkit._model.kernels import differentiable_kernels
from curvkit._targets import check_target
from curvkit.linear_operator import LinearOperator

_DIRECTIONS = ("input", "output")


class ActivationHessianLinearOperator(LinearOperator):
    r"""Hessian of the loss w.r.t. hidden features in a neural network.

    For one mini-batch ``X = {x_1, ..., x_N}``, ``y = {y_1, ..., y_N}`` with loss
    ``L(θ) = ℓ(f_θ(X), y)`` and an intermediate feature ``Z = {z_1, ..., z_N}`` of the forward
    pass, the operator represents

    .. math::
        \nabla^2_{\mathbf{Z}} \ell(f_\theta(\mathbf{X}), \mathbf{y})

    of dimension ``N dim(z)``. The feature is replaced by a free variable through a forward
    hook (``"output"``) or pre-hook (``"input"``), and products are reverse over reverse.

    Args:
        model_func: A neural network.
        loss_func: A loss function.
        activation: ``(layer_name, "input" | "output", index)``: the layer's name in
            ``model_func.named_modules()``, whether its input or output is meant, and which
            tensor of the input/output tuple (``0`` for single-tensor layers).
        data: An iterable of mini-batches. Must have a single batch, otherwise the activation
            Hessian is not defined.
        progressbar: Show a progressbar during matrix-multiplication. Default: ``False``.
        check_deterministic: Probe that model and data are deterministic. Default: ``True``.
        shape: Shape of the matrix; inferred with one forward pass if ``None``, else checked.

    Raises:
        ValueError: If ``data`` contains more than one batch, or ``activation`` does not name
            a layer, a direction (``"input"``/``"output"``) or a tensor of it, or the layer
            does not run exactly once per forward pass (a module shared by several places), or
            the targets do not suit the loss, or the data, the output or the loss hold NaN or
            infinity.
        RuntimeError: If ``check_deterministic`` and the model or data are not deterministic.

    Example:
        >>> from numpy import eye, allclose
        >>> from torch import manual_seed, rand
        >>> from torch.nn import Linear, MSELoss, Sequential, ReLU
        >>>
        >>> loss_func = MSELoss()
        >>> model = Sequential(Linear(4, 3), ReLU(), Linear(3, 2))
        >>> [name for name, _ in model.named_modules()]  # available layer names
        ['', '0', '1', '2']
        >>> data = [(rand(10, 4), rand(10, 2))]
        >>>
        >>> hessian = ActivationHessianLinearOperator(  # Hessian w.r.t. ReLU input
        ...     model, loss_func, ("1", "input", 0), data
        ... )
        >>> hessian.shape  # batch size * feature dimension (10 * 3)
        (30, 30)
        >>>
        >>> # The ReLU's input is the first Linear's output, let's check that
        >>> hessian2 = ActivationHessianLinearOperator(  # Hessian w.r.t. first output
        ...     model, loss_func, ("0", "output", 0), data
        ... )
        >>> I = eye(hessian.shape[1])
        >>> allclose(hessian @ I, hessian2 @ I)
        True
    """

    def __init__(
        self,
        model_func: nn.Module,
        loss_func: Callable[[Tensor, Tensor], Tensor],
        activation: tuple[str, str, int],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        shape: tuple[int, int] | None = None,
    ):
        if not isinstance(model_func, nn.Module):
            raise ValueError(f"model_func must be an nn.Module, got {type(model_func).__name__}.")
        if not callable(loss_func):
            raise ValueError(f"loss_func must be callable, got {type(loss_func).__name__}.")
        layer_name, direction, index = activation
        layers = dict(model_func.named_modules())
        if layer_name not in layers:
            raise ValueError(
                f"activation[0] must name a layer of model_func (one of {list(layers)}), got {layer_name!r}."
            )
        if direction not in _DIRECTIONS:
            raise ValueError(f"activation[1] must be 'input' or 'output', got {direction!r}.")
        self._model, self._loss_func = model_func, loss_func
        self._layer, self._direction, self._index = layers[layer_name], direction, index
        self._layer_name = layer_name
        device = next(model_func.parameters(), torch.empty(0)).device
        self._engine = MiniBatchEngine(data, device, progressbar=progressbar)
        batches = list(self._engine.batches())
        if len(batches) != 1:
            raise ValueError(
                f"data must contain exactly one batch for the activation Hessian, got {len(batches)}."
            )
        feature = self._capture(batches[0])
        self._feature_shape = feature.shape
        with torch.no_grad():  # the engine checked the data; the output and the loss, once here
            check_finite(0, self._batch_tensors(batches[0]), MODEL_HINT)
        if shape is not None and tuple(shape) != (feature.numel(), feature.numel()):
            raise ValueError(f"shape must be ({feature.numel()}, {feature.numel()}), got {tuple(shape)}.")
        super().__init__(
            (feature.numel(), feature.numel()), dtype=feature.dtype, device=feature.device, symmetric=True
        )
        if check_deterministic:
            probe_determinism(
                self._engine,
                model_func,
                self._batch_tensors,
                self._matmat,
                *self.shape[1:],
                feature.dtype,
                device,
            )

    # ---------------------------------------------------------------- hooks
    def _select(self, tensors) -> Tensor:
        tensors = tensors if isinstance(tensors, tuple) else (tensors,)
        if not 0 <= self._index < len(tensors) or not isinstance(tensors[self._index], Tensor):
            raise ValueError(
                f"activation[2] must index a tensor of the layer's {self._direction}, got {self._index}."
            )
        return tensors[self._index]

    def _replace(self, tensors, feature: Tensor):
        if not isinstance(tensors, tuple):
            return feature
        return (*tensors[: self._index], feature, *tensors[self._index + 1 :])

    def _capture(self, batch: Batch) -> Tensor:
        captured = []

        def save(module, inputs, outputs=None):
            captured.append(self._select(inputs if self._direction == "input" else outputs).detach())

        hook = (
            self._layer.register_forward_pre_hook(save)
            if self._direction == "input"
            else self._layer.register_forward_hook(save)
        )
        try:
            with torch.no_grad():
                self._model(batch.X)
        finally:
            hook.remove()
        if len(captured) != 1:
            raise ValueError(
                f"activation[0] = {self._layer_name!r} must run exactly once per forward pass of "
                f"model_func, but it ran {len(captured)} times"
                + (
                    " (a module used at several places): its input/output is then not one feature. "
                    "Give each place its own module (e.g. a copy) and name the one you mean."
                    if captured
                    else "."
                )
            )
        return captured[0]

    def _loss_of_feature(self, batch: Batch) -> Callable[[Tensor], Tensor]:
        def loss(feature: Tensor) -> Tensor:
            if self._direction == "input":
                hook = self._layer.register_forward_pre_hook(
                    lambda module, inputs: self._replace(inputs, feature)
                )
            else:
                hook = self._layer.register_forward_hook(
                    lambda module, inputs, outputs: self._replace(outputs, feature)
                )
            try:
                return self._loss_func(self._model(batch.X), batch.y)
            finally:
                hook.remove()

        return loss

    def _batch_tensors(self, batch: Batch) -> dict[str, Tensor]:
        """What must be finite, and repeat across passes for the determinism probe.

        Raises:
            ValueError: If the targets do not suit the loss (for the output's shape).
        """
        output = self._model(batch.X)
        check_target(self._loss_func, batch.y, batch.index, output.shape)
        loss = self._loss_func(output, batch.y)
        return {"the target y": batch.y, "the model output": output, "the loss": loss}

    # ---------------------------------------------------------------- product
    def _matmat(self, X: Tensor) -> Tensor:
        """Hessian-vector products by ``torch.func`` under ``torch.no_grad()``.

        The function transforms differentiate with respect to the feature regardless of the
        outer ``no_grad``, which keeps autograd from recording a graph through the model's
        parameters: products come back without ``requires_grad`` and hold no graph.
        """
        (batch,) = list(self._engine.batches(desc=type(self).__name__))
        tangents = X.T.reshape(X.shape[1], *self._feature_shape)
        with torch.no_grad(), differentiable_kernels(self._model):
            _, hvp = vjp(grad(self._loss_of_feature(batch)), self._capture(batch))
            products = vmap(lambda tangent: hvp(tangent)[0])(tangents)
        return products.reshape(X.shape[1], -1).T
