"""KFAC's defining formulas, computed densely and independently of curvkit's factor pass.

On the whole data set at once (one concatenated batch), the loss's output-space curvature is
formed densely with ``torch.func.hessian`` (type-2) or from the gradient of the full-data loss
(empirical), factored per sample (``Λ_n = S_n S_nᵀ`` by ``eigh``), and each column is pulled
back to every call of the layer through a zero perturbation added to its output (a forward hook:
no curvkit code). From the rows ``u`` (output side) and ``v`` (input side) of the block's
per-sample gradients ``Σ_r u_{k,n,r} v_{k,n,r}ᵀ``:

- expand: ``(1/I) (Σ_i u_i u_iᵀ) ⊗ (Σ_i v_i v_iᵀ)`` over the ``I`` triples ``i = (k, n, r)``;
- reduce: the same over the pairs ``(k, n)`` with ``u`` summed and ``v`` averaged over the rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import hessian
from torch.nn import functional


def concatenated(data):
    return torch.cat([X for X, _ in data]), torch.cat([y for _, y in data])


def output_columns(loss_func: nn.Module, output: Tensor, y: Tensor, fisher_type: str) -> Tensor:
    """``S`` ``[K, *output.shape]`` with ``Λ_n = S_n S_nᵀ`` for the full-data loss."""
    num_samples, per_sample = output.shape[0], output[0].numel()
    if fisher_type == "empirical":
        leaf = output.detach().requires_grad_()
        gradient = torch.autograd.grad(loss_func(leaf, y), leaf)[0]
        summed = loss_func.__class__(reduction="sum")(output.detach(), y)
        terms = 1.0 if loss_func.reduction == "sum" else (summed / loss_func(output.detach(), y)).item()
        return (gradient * terms**0.5).unsqueeze(0)
    full = hessian(lambda f: loss_func(f, y))(output.detach()).reshape(output.numel(), output.numel())
    columns = output.new_zeros(per_sample, num_samples, per_sample)
    for n in range(num_samples):
        rows = slice(n * per_sample, (n + 1) * per_sample)
        values, vectors = torch.linalg.eigh(full[rows, rows])
        columns[:, n] = (vectors * values.clamp(min=0).sqrt()).T
    return columns.reshape(per_sample, *output.shape)


def calls(model: nn.Module, module: nn.Module, X: Tensor, columns_of) -> list[tuple[Tensor, Tensor]]:
    """``(input, gradients [K, *output.shape])`` of every call of ``module``."""
    records = []

    def hook(_module, args, output):
        perturbation = torch.zeros_like(output, requires_grad=True)
        records.append((args[0].detach(), perturbation))
        return output + perturbation

    handle = module.register_forward_hook(hook)
    try:
        output = model(X)
    finally:
        handle.remove()
    columns = columns_of(output)
    per_column = [
        torch.autograd.grad(output, [p for _, p in records], column, retain_graph=True, allow_unused=True)
        for column in columns
    ]
    return [
        (inputs, torch.stack([gradients[index] for gradients in per_column]))
        for index, (inputs, _) in enumerate(records)
    ]


def rows(module: nn.Module, inputs: Tensor, gradients: Tensor) -> tuple[Tensor, Tensor]:
    """Output-side ``[K, N, R, out]`` and input-side ``[N, R, in]`` rows of a linear layer or convolution."""
    num_columns, num_samples = gradients.shape[:2]
    if isinstance(module, nn.Conv2d | nn.Conv1d):
        two_d = inputs if isinstance(module, nn.Conv2d) else inputs.unsqueeze(2)
        pad = lambda value, fill: value if isinstance(module, nn.Conv2d) else (fill, *value)  # noqa: E731
        patches = functional.unfold(
            two_d,
            pad(module.kernel_size, 1),
            pad(module.dilation, 1),
            pad(module.padding, 0),
            pad(module.stride, 1),
        ).transpose(1, 2)
        out = gradients.reshape(num_columns, num_samples, gradients.shape[2], -1).transpose(2, 3)
        return out, patches
    return (
        gradients.reshape(num_columns, num_samples, -1, gradients.shape[-1]),
        inputs.reshape(num_samples, -1, inputs.shape[-1]),
    )


def expand(u: Tensor, v: Tensor) -> Tensor:
    """``(1/I) (Σ u uᵀ) ⊗ (Σ v vᵀ)`` over the triples ``(k, n, r)`` of ``u, v [K, N, R, ·]``."""
    u, v = u.reshape(-1, u.shape[-1]), v.reshape(-1, v.shape[-1])
    return torch.kron(u.T @ u, v.T @ v) / u.shape[0]


def reduce(u: Tensor, v: Tensor) -> Tensor:
    """The same over pairs ``(k, n)``, ``u`` summed and ``v`` averaged over the rows."""
    return expand(u.sum(2, keepdim=True), v.mean(2, keepdim=True))


def with_ones(v: Tensor) -> Tensor:
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def layer_block(model, loss_func, data, module, fisher_type, approx, joined=False, bias=False) -> Tensor:
    """KFAC's dense block of ``module``'s weight (or its bias) from every call's rows.

    ``joined``: of the weight and bias, on ``(vec W, b)`` (permuted from ``vec [W b]``).
    """
    X, y = concatenated(data)
    us, vs = [], []
    for inputs, gradients in calls(model, module, X, lambda f: output_columns(loss_func, f, y, fisher_type)):
        u, v = rows(module, inputs, gradients)
        us.append(u)
        vs.append(v.expand(u.shape[0], *v.shape))
    u, v = torch.cat(us, dim=2), torch.cat(vs, dim=2)
    if joined:
        v = with_ones(v)
    if bias:
        v = v.new_ones(*v.shape[:-1], 1)
    result = (expand if approx == "expand" else reduce)(u, v)
    if joined:
        out, columns = u.shape[-1], v.shape[-1]
        entries = torch.arange(out * columns).reshape(out, columns)
        order = torch.cat([entries[:, :-1].flatten(), entries[:, -1]])
        result = result[order][:, order]
    return result
