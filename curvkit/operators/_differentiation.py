r"""The model as a differentiable function of its parameters, and its derivatives per batch.

Reverse mode by default. On the MLP benchmark (2 CPU cores), reverse-over-reverse took
2.7 gradients per Hessian product against 3.9 for forward-over-reverse, and a GGN product
whose Jacobian-vector product is the transpose of a vector-Jacobian product (a "double vjp")
1.7 gradients against 2.4 with forward mode. Reverse mode also works where forward-mode
derivatives are missing (fused attention kernels, the fast path of ``nn.TransformerEncoderLayer``
in eval mode). Convolutional networks are the measured exception (:func:`_has_convolutions`):
their ``J v`` runs in forward mode, falling back to reverse mode where that is missing.

Fused scaled-dot-product attention kernels have no second derivative either, so all products
run with the math attention kernel selected (:func:`differentiable_attention`).

``nn.Module``\ s are differentiated with ``torch.func`` through ``functional_call``; any other
callable ``X ↦ f(X)`` that closes over its parameters falls back to ``torch.autograd``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap
from torch.func import jvp as forward_jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from curvkit._layout import TensorListLayout


def differentiable_attention():
    """Context that selects the twice-differentiable math kernel for ``scaled_dot_product_attention``."""
    return sdpa_kernel(SDPBackend.MATH)


@dataclass(frozen=True)
class Linearization:
    """A batch's model output and the products with its Jacobian ``J = ∂f/∂θ``.

    Attributes:
        output: ``f(X; θ)``, detached.
        jvp: ``[V_1, ..., V_P]`` (each ``[k, *θ_p.shape]``) ↦ ``J V`` of shape ``[k, *output.shape]``.
        vjp: ``W`` of shape ``[k, *output.shape]`` ↦ ``Jᵀ W`` as a list of ``[k, *θ_p.shape]``.
    """

    output: Tensor
    jvp: Callable[[list[Tensor]], Tensor]
    vjp: Callable[[Tensor], list[Tensor]]


def _normalize_params(
    params: Sequence[Tensor] | Mapping[str, Tensor],
) -> tuple[list[str] | None, list[Tensor]]:
    if isinstance(params, Mapping):
        return list(params.keys()), list(params.values())
    if isinstance(params, Tensor) or not isinstance(params, Sequence):
        raise ValueError(
            f"params must be a list of tensors or a dict of named tensors, got {type(params).__name__}."
        )
    return None, list(params)


def _module_parameter_names(model: nn.Module, names: list[str] | None, tensors: list[Tensor]) -> list[str]:
    """Find the attribute name of each tensor in ``model`` (by identity)."""
    by_identity = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(tensor), name)
    found = []
    for index, tensor in enumerate(tensors):
        label = f"params[{names[index]!r}]" if names else f"params[{index}]"
        if id(tensor) not in by_identity:
            raise ValueError(f"{label} is not a parameter of model_func (compared by identity).")
        found.append(by_identity[id(tensor)])
    return found


class ModelFunction:
    """``f(X; θ)`` for a subset ``θ`` of a model's parameters.

    Args:
        model_func: An ``nn.Module`` or a callable ``X ↦ f(X)``.
        params: The parameters ``θ``: a list of tensors or a dict of named tensors, all of one
            dtype and device, all requiring grad.

    Raises:
        ValueError: If ``params`` is empty, has mixed dtypes/devices, a tensor that does not
            require grad, or a tensor that is not a parameter of the module.
    """

    def __init__(
        self, model_func: Callable[[Tensor], Tensor], params: Sequence[Tensor] | Mapping[str, Tensor]
    ):
        if not callable(model_func):
            raise ValueError(f"model_func must be callable, got {type(model_func).__name__}.")
        names, tensors = _normalize_params(params)
        if not tensors:
            raise ValueError("params must contain at least one tensor.")
        for index, tensor in enumerate(tensors):
            label = f"params[{names[index]!r}]" if names else f"params[{index}]"
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{label} must be a tensor, got {type(tensor).__name__}.")
            if not tensor.requires_grad:
                raise ValueError(
                    f"{label} does not require grad; curvature is only defined for trainable parameters."
                )
        if len({t.dtype for t in tensors}) > 1 or len({t.device for t in tensors}) > 1:
            raise ValueError("params must all have the same dtype and device.")
        self.model_func = model_func
        self.labels = (
            [f"params[{n!r}]" for n in names] if names else [f"params[{i}]" for i in range(len(tensors))]
        )
        self.tensors = tensors
        self.layout = TensorListLayout([tensor.shape for tensor in tensors])
        self.dtype, self.device = tensors[0].dtype, tensors[0].device
        self.is_module = isinstance(model_func, nn.Module)
        # Convolutions: J v in forward mode, k columns in chunks of 4 (see _has_convolutions)
        self.prefers_forward_mode = _has_convolutions(model_func)
        self.column_chunk_size = 4 if self.prefers_forward_mode else None
        self._names = _module_parameter_names(model_func, names, tensors) if self.is_module else None

    # ------------------------------------------------------------------ evaluation
    def __call__(self, X: Tensor | Mapping[str, Tensor]) -> Tensor:
        """The output at the current parameters (differentiable through autograd)."""
        return self.model_func(X)

    def functional(self, X, indices: Sequence[int]) -> Callable[..., Tensor]:
        """``(θ_i for i in indices) ↦ f(X; θ)`` with the other parameters held fixed."""
        fixed = {name: tensor.detach() for name, tensor in zip(self._names, self.tensors)}

        def forward(*values: Tensor) -> Tensor:
            replaced = dict(fixed)
            replaced.update({self._names[i]: value for i, value in zip(indices, values)})
            return functional_call(self.model_func, replaced, (X,))

        return forward

    def check_all_used(self, X) -> None:
        """Raise if some parameter does not influence the output on batch ``X``.

        Raises:
            ValueError: Naming the unused parameter.
        """
        with torch.enable_grad():
            output = self.model_func(X)
            if not isinstance(output, Tensor) or not output.requires_grad:
                raise ValueError("model_func's output does not depend on params.")
            gradients = torch.autograd.grad(output.sum(), self.tensors, allow_unused=True)
        for label, gradient in zip(self.labels, gradients):
            if gradient is None:
                raise ValueError(
                    f"{label} is not used by model_func: its curvature would be zero. Remove it."
                )

    # ------------------------------------------------------------------ derivatives
    def linearize(self, X) -> Linearization:
        """Output and Jacobian products on batch ``X``.

        ``Jᵀ W`` is a ``vjp``; ``J V`` transposes that ``vjp`` (reverse mode), except for
        convolutional networks, where forward mode is faster (:func:`_has_convolutions`).
        """
        if self.is_module:
            return self._linearize_functional(X)
        with torch.enable_grad(), differentiable_attention():
            output = self.model_func(X)
            dummy = torch.zeros_like(output, requires_grad=True)
            transposed = list(torch.autograd.grad(output, self.tensors, dummy, create_graph=True))

        def jvp(tangents: list[Tensor]) -> Tensor:
            with differentiable_attention():
                return _batched_grad(transposed, [dummy], tangents)[0]

        def pullback(cotangents: Tensor) -> list[Tensor]:
            with differentiable_attention():
                return _batched_grad([output], self.tensors, [cotangents])

        return Linearization(output.detach(), jvp, pullback)

    def _linearize_functional(self, X) -> Linearization:
        forward = self.functional(X, range(len(self.tensors)))
        primals = tuple(tensor.detach() for tensor in self.tensors)
        chunk_size = self.column_chunk_size
        with differentiable_attention():
            output, pullback = vjp(forward, *primals)
        transposed_pullback = []  # built on first use: it costs one backward pass

        def reverse_jvp(tangents: list[Tensor]) -> Tensor:
            if not transposed_pullback:
                # u ↦ Jᵀu is linear; the vjp of that map with cotangent v is J v.
                transposed_pullback.append(vjp(pullback, torch.zeros_like(output))[1])
            return vmap(lambda *v: transposed_pullback[0](v)[0], chunk_size=chunk_size)(*tangents)

        def jvp(tangents: list[Tensor]) -> Tensor:
            with differentiable_attention():
                if self.prefers_forward_mode:
                    try:
                        return vmap(lambda *v: forward_jvp(forward, primals, v)[1], chunk_size=chunk_size)(
                            *tangents
                        )
                    except NotImplementedError as error:  # an operation without forward-mode derivative
                        if "forward AD" not in str(error):
                            raise
                return reverse_jvp(tangents)

        def vjp_columns(cotangents: Tensor) -> list[Tensor]:
            with differentiable_attention():
                return list(vmap(pullback, chunk_size=chunk_size)(cotangents))

        return Linearization(output.detach(), jvp, vjp_columns)

    def hessian_product(
        self, X, y: Tensor, loss_func: Callable, indices: Sequence[int]
    ) -> Callable[[list[Tensor]], list[Tensor]]:
        """``V ↦ ∇²_θ L_b V`` for the Hessian block of the parameters in ``indices``.

        The gradient's graph is built once; each call is one reverse pass through it
        (reverse over reverse), ``vmap``-ed over the leading axis of the tangents.

        Args:
            X: Batch input.
            y: Batch target.
            loss_func: The loss.
            indices: Which parameters form the Hessian block.

        Returns:
            A function of tangents ``[k, *θ_i.shape]`` (``i`` in ``indices``) returning the
            product in the same layout.
        """
        block = [self.tensors[i] for i in indices]
        with differentiable_attention():
            if self.is_module:
                forward = self.functional(X, indices)
                gradient = grad(
                    lambda *values: loss_func(forward(*values), y), argnums=tuple(range(len(indices)))
                )
                _, hvp = vjp(gradient, *[tensor.detach() for tensor in block])
                return lambda tangents: list(
                    _with_attention(vmap(hvp, chunk_size=self.column_chunk_size), tuple(tangents))
                )
            with torch.enable_grad():
                loss = loss_func(self.model_func(X), y)
                gradient = list(torch.autograd.grad(loss, block, create_graph=True))

        def hvp_autograd(tangents: list[Tensor]) -> list[Tensor]:
            with differentiable_attention():
                return _batched_grad(gradient, block, tangents)

        return hvp_autograd


def _has_convolutions(model_func: Callable) -> bool:
    """Whether ``model_func`` is a module with convolution layers.

    Such models get two measured exceptions to the defaults (benchmark CNN, one batch, CPU time
    on 1 thread, in gradients): ``J v`` in forward mode instead of transposing a ``vjp``, since
    the double backward of a convolution is expensive (GGN matvec 2.5 instead of 3.1), and
    columns ``vmap``-ed in chunks of 4, since the batching rule for convolutions turns ``k``
    columns into one large grouped convolution plus copies (16 columns: 11 instead of 19 in
    forward mode, 16 instead of 32 in reverse mode). Dense layers and attention are fastest
    with the defaults, and forward mode falls back to reverse where a derivative is missing.
    """
    return isinstance(model_func, nn.Module) and any(
        isinstance(module, nn.modules.conv._ConvNd) for module in model_func.modules()
    )


def _with_attention(function: Callable, *args):
    with differentiable_attention():
        return function(*args)


def _batched_grad(outputs: list[Tensor], inputs: list[Tensor], grad_outputs: list[Tensor]) -> list[Tensor]:
    """Autograd vector-Jacobian products for a leading batch of ``grad_outputs``."""
    return list(
        torch.autograd.grad(
            outputs, inputs, grad_outputs, retain_graph=True, is_grads_batched=True, materialize_grads=True
        )
    )
