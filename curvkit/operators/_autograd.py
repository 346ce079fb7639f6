"""Products with the Jacobian and the Hessian through ``torch.autograd``.

No function transforms: the model is called as it is, derivatives are taken with
``torch.autograd.grad`` (several columns: ``is_grads_batched``) and forward-mode dual numbers
(``torch.autograd.forward_ad``). Which product uses what, and the measurements behind it, is
decided in :mod:`._differentiation`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

# where weight normalization looks up its kernel: torch itself (parametrizations) and the module
# of the older hook-based version, which imported the name
_WEIGHT_NORM_HOMES = [torch, importlib.import_module("torch.nn.utils.weight_norm")]


def _composite_weight_norm(v: Tensor, g: Tensor, dim: int = 0) -> Tensor:
    """``torch._weight_norm`` from differentiable primitives: ``v g / ‖v‖`` (norm over all but ``dim``)."""
    return v * (g / torch.norm_except_dim(v, 2, dim))


def _normalizes_weights(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a weight-norm parametrization or carries the older weight-norm hook."""
    hook_type = _WEIGHT_NORM_HOMES[1].WeightNorm
    return isinstance(module, torch.nn.utils.parametrizations._WeightNorm) or any(
        isinstance(hook, hook_type) for hook in module._forward_pre_hooks.values()
    )


@contextmanager
def differentiable_kernels(model_func: Callable | None) -> Iterator[None]:
    """Select kernels with every derivative that curvature products take, for ``model_func``.

    - ``scaled_dot_product_attention``: the math kernel. The fused ones have no forward-mode and
      no second derivative (``NotImplementedError: Trying to use forward AD with
      _scaled_dot_product_flash_attention_for_cpu``).
    - Modules with recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): PyTorch's own RNN
      kernels instead of oneDNN's on the CPU (whose LSTM has no batched double backward, so
      Hessian columns fail) and cuDNN's on GPUs (no double backward, and no backward at all in
      eval mode). This switches the backends off for the whole call, convolutions included, so
      it applies only to models with recurrent layers.
    - Embeddings with ``sparse=True``: dense gradients during the call (sparse ones have no
      batched or forward-mode form); the gradient is the same.
    - Weight normalization (``parametrizations.weight_norm`` and the older hook): its fused
      kernel's second derivative is wrong (Hessians come out non-symmetric); the composite
      ``v g / ‖v‖`` computes the same weight with exact derivatives.
    - The fused fast path of ``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` in
      eval mode, off (``torch.backends.mha``): it has no derivatives, and it turns padded inputs
      into nested tensors, which dual numbers cannot carry, and fills padded positions with
      zeros where the regular path computes them (a different function).
    """
    modules = list(model_func.modules()) if isinstance(model_func, torch.nn.Module) else []
    recurrent = any(isinstance(module, torch.nn.RNNBase) for module in modules)
    backends = [torch.backends.mkldnn, torch.backends.cudnn] if recurrent else []
    enabled = [backend.enabled for backend in backends]
    sparse = [m for m in modules if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    weight_norms = _WEIGHT_NORM_HOMES if any(_normalizes_weights(module) for module in modules) else []
    fused_weight_norms = [home._weight_norm for home in weight_norms]
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for home in weight_norms:
            home._weight_norm = _composite_weight_norm
        for backend in backends:
            backend.enabled = False
        for embedding in sparse:
            embedding.sparse = False
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for home, fused in zip(weight_norms, fused_weight_norms):
            home._weight_norm = fused
        for backend, was_enabled in zip(backends, enabled):
            backend.enabled = was_enabled
        for embedding in sparse:
            embedding.sparse = True


def require_autograd() -> None:
    """Raise where derivatives cannot be taken.

    Raises:
        RuntimeError: Under ``torch.inference_mode()``, where autograd and forward-mode dual
            numbers are switched off (products would fail, or come out zero).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "curvkit's curvature operators take derivatives, which torch.inference_mode() switches "
            "off; build and multiply them outside of it (torch.no_grad() is fine)."
        )


def grad_columns(
    outputs: Sequence[Tensor], inputs: Sequence[Tensor], cotangents: Sequence[Tensor]
) -> list[Tensor]:
    """Vector-Jacobian products for cotangents with a leading column axis ``[k, *output.shape]``.

    One column is a plain backward pass; several are batched (``is_grads_batched``). The graph is
    kept, inputs that do not influence the outputs get zeros.
    """
    if all(cotangent.shape[0] == 1 for cotangent in cotangents):
        gradients = torch.autograd.grad(
            outputs, inputs, [c[0] for c in cotangents], retain_graph=True, materialize_grads=True
        )
        return [gradient.unsqueeze(0) for gradient in gradients]
    return list(
        torch.autograd.grad(
            outputs, inputs, cotangents, retain_graph=True, is_grads_batched=True, materialize_grads=True
        )
    )


def reverse_products(
    output: Tensor, tensors: list[Tensor]
) -> tuple[Callable[[list[Tensor]], Tensor], Callable[[Tensor], list[Tensor]]]:
    """``J V`` and ``Jᵀ W`` for an ``output`` that carries its autograd graph back to ``tensors``.

    ``Jᵀ W`` is a backward pass. ``u ↦ Jᵀ u`` is linear, so its vector-Jacobian product with
    cotangent ``v`` is ``J v`` (a "double backward"); the graph of ``Jᵀ u`` is built on first use.
    """
    transposed: list[tuple[Tensor, list[Tensor]]] = []

    def jvp(tangents: list[Tensor]) -> Tensor:
        with torch.enable_grad():
            if not transposed:
                dummy = torch.zeros_like(output, requires_grad=True)
                gradients = torch.autograd.grad(output, tensors, dummy, create_graph=True)
                transposed.append((dummy, list(gradients)))
            dummy, gradients = transposed[0]
            return grad_columns(gradients, [dummy], tangents)[0]

    def vjp(cotangents: Tensor) -> list[Tensor]:
        return grad_columns([output], tensors, [cotangents])

    return jvp, vjp


def parameter_paths(module: torch.nn.Module) -> dict[int, list[str]]:
    """The names :func:`call_with` substitutes each parameter under, keyed by ``id``.

    One per (module object, attribute): a tensor tied to several modules under each of them, a
    module registered twice (``nn.Sequential(lin, act, lin)``) under its first path only
    (substituting both of its paths makes torch 2.13 leave a substitute behind in the model).
    """
    paths: dict[int, list[str]] = {}
    for module_name, submodule in module.named_modules():  # each module object once
        for name, tensor in submodule._parameters.items():
            if tensor is not None:
                paths.setdefault(id(tensor), []).append(f"{module_name}.{name}" if module_name else name)
    return paths


def call_with(module: torch.nn.Module, aliases: list[list[str]], values: Sequence[Tensor], X) -> Tensor:
    """``module(X)`` with the parameters under ``aliases`` (all names of each) replaced by ``values``.

    One name per (module object, attribute) is given, and ``tie_weights=False``: with torch 2.13's
    default, or with both paths of a module registered twice (``nn.Sequential(lin, act, lin)``),
    the module is not restored after the call, and the user's model keeps a substitute tensor in
    place of its parameter.
    """
    mapping = {alias: value for names, value in zip(aliases, values) for alias in names}
    return functional_call(module, mapping, (X,), tie_weights=False)


def output_with_tangent(
    module: torch.nn.Module,
    aliases: list[list[str]],
    tensors: list[Tensor],
    X,
    tangents: list[Tensor],
    record_graph: bool = True,
) -> tuple[Tensor, Tensor]:
    """``f(X)`` and ``J v`` from one forward pass with dual numbers.

    Args:
        module: The model.
        aliases: Every attribute name of each of ``tensors`` in ``module``.
        tensors: The parameters ``θ``.
        X: Batch input.
        tangents: ``v`` as ``[1, *θ_p.shape]`` per parameter.
        record_graph: Whether the output carries its autograd graph back to ``θ`` (for ``Jᵀ w``).

    Returns:
        The output and ``J v`` as ``[1, *output.shape]``.

    Raises:
        NotImplementedError: If an operation has no forward-mode derivative (``"forward AD"`` in
            the message).
    """
    with torch.set_grad_enabled(record_graph), differentiable_kernels(module), forward_ad.dual_level():
        duals = [forward_ad.make_dual(t, v[0]) for t, v in zip(tensors, tangents)]
        output, output_tangent = forward_ad.unpack_dual(call_with(module, aliases, duals, X))
    if output_tangent is None:  # no parameter reaches the output on this batch
        output_tangent = torch.zeros_like(output)
    return output, output_tangent.unsqueeze(0)


def hessian_products(
    model_func: Callable, X, y: Tensor, loss_func: Callable, block: list[Tensor]
) -> Callable[[list[Tensor]], list[Tensor]]:
    """``V ↦ ∇²_θ L_b V`` over the parameters ``block``: reverse over reverse through autograd."""
    with torch.enable_grad(), differentiable_kernels(model_func):
        loss = loss_func(model_func(X), y)
        gradient = list(torch.autograd.grad(loss, block, create_graph=True))

    def hvp(tangents: list[Tensor]) -> list[Tensor]:
        return grad_columns(gradient, block, tangents)

    return hvp
