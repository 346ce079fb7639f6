"""Products with the Jacobian and the Hessian through ``torch.autograd``.

No function transforms: the model is called as it is, derivatives are taken with
``torch.autograd.grad`` (several columns: ``is_grads_batched``) and forward-mode dual numbers
(``torch.autograd.forward_ad``). Which product uses what, and the measurements behind it, is
decided in :mod:`.differentiation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.func import functional_call

from curvkit._model.kernels import differentiable_kernels


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


def paths_agree(result: Tensor, expected: Tensor) -> bool:
    """Whether two ways of taking the same derivatives agree.

    Within ``√eps`` relative to ``expected`` entrywise, or to its largest finite entry (float32:
    3e-4, float64: 1.5e-8); NaN and infinities agree where both paths have them (a product that
    is not finite is no fault of either path, and its largest entry no tolerance).
    """
    tolerance = torch.finfo(expected.dtype).eps ** 0.5
    scale = float(expected.abs().nan_to_num(nan=0.0, posinf=0.0).max())
    return torch.allclose(result, expected, rtol=tolerance, atol=tolerance * scale, equal_nan=True)


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


def leaf_uses(output: Tensor) -> tuple[dict[int, int], set]:
    """The graph's nodes, and for each leaf tensor how many of them consume it.

    Returns:
        ``{id(leaf): number of consuming nodes}`` and the set of nodes of ``output``'s graph.
    """
    uses: dict[int, int] = {}
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)  # AccumulateGrad: a leaf
            if variable is not None:
                uses[id(variable)] = uses.get(id(variable), 0) + 1
            else:
                stack.append(child)
    return uses, seen
