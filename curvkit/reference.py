r"""Dense ground truth for curvature matrices, computed from their definitions with ``torch.func``.

Everything here builds the full ``[D, D]`` (or ``[N·C, D]``) matrix, so it is meant for small
models only: tests, examples and sanity checks. It is written independently of
:mod:`curvkit.operators` so that the two can be compared.

Notation (as in the operators): the risk is

.. math::
    \mathcal{L}(\theta) = c \sum_{n=1}^{N} \ell(f_\theta(x_n), y_n),

with :math:`c = 1/K` for ``reduction='mean'`` (``K`` the number of terms the mean averages over,
as ``loss_func`` computes it on the concatenated data) and :math:`c = 1` for ``'sum'``. ``D`` is the total
number of entries of ``params``, flattened row-major per tensor and concatenated in the given
order. ``data`` yields mini-batches ``(X, y)``; ``X`` is a tensor or a dict of tensors (then
``batch_size_fn(X)`` must give its batch size, and every entry must be batched along its first
axis: the references concatenate the batches, so an entry shared by a batch's samples is not
supported here, while the operators accept it).

Empirical Fisher and MC-Fisher follow curvkit's scaling convention: per-sample
gradients :math:`g_n` are those of the per-sample loss *summed* over its terms, and a
``'mean'`` reduction contributes a factor :math:`1/T`, where :math:`T` is the total number of
averaged terms (the output's ``numel`` for MSE and BCE-with-logits; the number of class-index
targets for cross-entropy, i.e. ``N`` for ``[N]`` targets and ``N·T`` for ``[N, T]``). Only then does
the MC-Fisher equal the GGN in expectation for every loss (with targets that are
probability distributions, for cross-entropy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jacrev, vmap

from curvkit._model.autograd import call_with, parameter_paths
from curvkit._model.kernels import differentiable_kernels
from curvkit._predictive import batch_generator, sample_targets

Params = Sequence[Tensor] | Mapping[str, Tensor]
Batch = tuple[Tensor | Mapping[str, Tensor], Tensor]
BatchSizeFn = Callable[[Any], int]


def _dense_hessian(func: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Hessian ``[*x.shape, *x.shape]`` of a scalar function, as ``jacrev(grad(func))``.

    Not ``torch.func.hessian`` (``jacfwd(jacrev)``) nor ``jacrev(jacrev)``: in torch 2.13,
    differentiating through ``jacrev`` of ``layer_norm`` gives wrong mixed second derivatives
    (weight × input). ``jacfwd(grad)`` is right there but fails on mean-reduced ``mse_loss``
    ("ZeroTensors are immutable"). ``jacrev(grad)`` agrees with finite differences and
    ``torch.autograd.functional.hessian`` on both.
    """
    return jacrev(grad(func))(x)


def _param_names(model_func: nn.Module, params: Params) -> tuple[list[list[str]], list[Tensor]]:
    """Find the names under which each of ``params`` is substituted in ``model_func``.

    Matched by identity (:func:`curvkit._model.autograd.parameter_paths`).

    Raises:
        TypeError: If ``model_func`` is not an ``nn.Module``.
        ValueError: If ``params`` is empty or holds a tensor that is not a parameter of the model.
    """
    if not isinstance(model_func, nn.Module):
        raise TypeError(f"model_func must be an nn.Module, got {type(model_func).__name__}.")
    tensors = list(params.values()) if isinstance(params, Mapping) else list(params)
    if not tensors:
        raise ValueError("params must contain at least one tensor, got none.")
    names_of = parameter_paths(model_func)
    names = []
    for index, tensor in enumerate(tensors):
        if id(tensor) not in names_of:
            raise ValueError(
                f"params[{index}] (shape {tuple(tensor.shape)}) is not a parameter of model_func."
            )
        names.append(names_of[id(tensor)])
    return names, tensors


def _concatenate(parts: Sequence[Any]) -> Any:
    """Concatenate tensors along dim 0, or dicts of tensors key-wise."""
    if isinstance(parts[0], Mapping):
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return torch.cat(list(parts))


def _batch_size(X: Any, batch_size_fn: BatchSizeFn | None) -> int:
    """Batch size of ``X``: ``batch_size_fn(X)`` if given, else ``X.shape[0]`` for a tensor.

    Raises:
        ValueError: If ``X`` is a dict and ``batch_size_fn`` is missing.
    """
    if batch_size_fn is not None:
        return batch_size_fn(X)
    if isinstance(X, Mapping):
        raise ValueError("batch_size_fn is required when the inputs X are dicts; got None.")
    return X.shape[0]


def _load(data: Iterable[Batch], batch_size_fn: BatchSizeFn | None) -> list[tuple[Any, Tensor]]:
    """Materialize ``data`` as a list of ``(X, y)``, checking that every batch is non-empty.

    Raises:
        ValueError: If ``data`` or one of its batches is empty.
    """
    batches = list(data)
    if not batches:
        raise ValueError("data must yield at least one mini-batch (X, y), got none.")
    for index, (X, _) in enumerate(batches):
        if _batch_size(X, batch_size_fn) < 1:
            raise ValueError(f"data's mini-batch {index} is empty.")
    return batches


def _concatenated(batches: list[tuple[Any, Tensor]]) -> tuple[Any, Tensor]:
    """All inputs and targets, concatenated along the batch axis."""
    return _concatenate([X for X, _ in batches]), _concatenate([y for _, y in batches])


def _flat_model(model_func: nn.Module, params: Params) -> tuple[Callable[[Tensor, Any], Tensor], Tensor]:
    """``(θ, X) ↦ f(X; θ)`` for the flat parameter vector ``θ ∈ ℝᴰ``, and the current ``θ``."""
    names, tensors = _param_names(model_func, params)
    shapes = [tensor.shape for tensor in tensors]
    numels = [tensor.numel() for tensor in tensors]

    def output(theta: Tensor, X: Any) -> Tensor:
        blocks = theta.split(numels)
        return call_with(model_func, names, [b.reshape(s) for b, s in zip(blocks, shapes)], X)

    return output, torch.cat([tensor.detach().flatten() for tensor in tensors])


def _reduction(loss_func: nn.Module) -> str:
    """The loss's reduction, ``'mean'`` or ``'sum'``.

    Raises:
        ValueError: If ``loss_func`` has no supported ``reduction``.
    """
    reduction = getattr(loss_func, "reduction", None)
    if reduction not in ("mean", "sum", "batchmean"):
        raise ValueError(f"loss_func must have reduction 'mean', 'sum' or 'batchmean', got {reduction!r}.")
    return "mean" if reduction == "batchmean" else reduction


def _num_loss_terms(loss_func: nn.Module, output: Tensor, y: Tensor) -> int:
    """Number ``T`` of terms a ``'mean'``-reduced loss averages over.

    Args:
        loss_func: A ``torch.nn`` loss: entrywise (MSE, BCE, BCE-with-logits, L1, smooth L1,
            Huber, soft margin, KL divergence) or cross-entropy / NLL.
        output: Model output of the whole data set.
        y: Targets of the whole data set.

    Returns:
        ``output.numel()`` for the entrywise losses (``N`` for ``KLDivLoss(reduction='batchmean')``);
        for cross-entropy the number of class-index targets other than ``ignore_index``
        (``y.numel()`` if none is ignored), or ``y.numel() / C`` for probability targets.

    Raises:
        NotImplementedError: For other losses, or cross-entropy with class weights.
    """
    if isinstance(loss_func, nn.KLDivLoss) and loss_func.reduction == "batchmean":
        return output.shape[0]
    entrywise = (nn.MSELoss, nn.BCEWithLogitsLoss, nn.BCELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
    if isinstance(loss_func, (*entrywise, nn.SoftMarginLoss, nn.KLDivLoss)):
        return output.numel()
    if isinstance(loss_func, nn.CrossEntropyLoss | nn.NLLLoss) and loss_func.weight is None:
        return y.numel() // y.shape[1] if y.is_floating_point() else int((y != loss_func.ignore_index).sum())
    raise NotImplementedError(
        f"Number of averaged terms unknown for loss_func {loss_func!r}; supported: the entrywise "
        "torch.nn losses, CrossEntropyLoss and NLLLoss without class weights."
    )


def _sum_loss(loss_func: nn.Module) -> nn.Module:
    """A copy of ``loss_func`` with ``reduction='sum'`` (same class weights, pos_weight, ...)."""
    summed = copy.copy(loss_func)
    summed.reduction = "sum"
    return summed


def _without_smoothing(loss_func: nn.Module) -> nn.Module:
    """The negative log-likelihood of the samples: ``loss_func`` without label smoothing."""
    if getattr(loss_func, "label_smoothing", 0.0) == 0.0:
        return loss_func
    unsmoothed = copy.copy(loss_func)
    unsmoothed.label_smoothing = 0.0
    return unsmoothed


def _scale(loss_func: nn.Module, output: Tensor, y: Tensor) -> float:
    """``1`` for ``reduction='sum'``, ``1 / T`` for ``'mean'`` (see :func:`_num_loss_terms`)."""
    return 1.0 if _reduction(loss_func) == "sum" else 1.0 / _num_loss_terms(loss_func, output, y)


def _per_sample_gradients(
    output: Callable[[Tensor, Any], Tensor], loss_func: nn.Module, theta: Tensor, X: Any, y: Tensor
) -> Tensor:
    """Rows ``g_n = ∇_θ ℓ_sum(f_θ(x_n), y_n)``, the summed per-sample loss gradients, ``[N, D]``.

    The Jacobian of the vector of per-sample losses: the model runs once on all samples (which
    must not interact, as everywhere), so models that ``vmap`` cannot push single samples
    through (recurrent layers) work too.
    """
    unreduced = copy.copy(loss_func)
    unreduced.reduction = "none"

    def sample_losses(theta: Tensor) -> Tensor:
        losses = unreduced(output(theta, X), y)
        return losses.reshape(losses.shape[0], -1).sum(1)

    return jacrev(sample_losses)(theta)


def hessian_matrix(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    batch_size_fn: BatchSizeFn | None = None,
) -> Tensor:
    r"""Dense Hessian :math:`\nabla^2_\theta \mathcal{L}(\theta)` of the full-data risk.

    The risk is evaluated once, as ``loss_func(model_func(X_all), y_all)`` on all batches
    concatenated, so the result does not depend on how the data is split into batches.

    Args:
        model_func: The network, an ``nn.Module``.
        loss_func: Loss with reduction ``'mean'`` or ``'sum'``.
        params: Parameters of ``model_func`` (list, or dict of named tensors).
        data: Mini-batches ``(X, y)``.
        batch_size_fn: Batch size of an input ``X``; required if ``X`` is a dict.

    Returns:
        The Hessian, ``[D, D]``.
    """
    output, theta = _flat_model(model_func, params)
    X, y = _concatenated(_load(data, batch_size_fn))
    with differentiable_kernels(model_func):
        return _dense_hessian(lambda flat: loss_func(output(flat, X), y), theta).detach()


def gradient_and_loss(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    batch_size_fn: BatchSizeFn | None = None,
) -> tuple[list[Tensor], Tensor]:
    r"""The full-data risk :math:`\mathcal{L}(\theta)` and its gradient, on the data as one batch.

    Returns:
        The gradient as tensors shaped like ``params`` (in their order), and the loss.
    """
    output, theta = _flat_model(model_func, params)
    X, y = _concatenated(_load(data, batch_size_fn))
    with differentiable_kernels(model_func):
        gradient, loss = torch.func.grad_and_value(lambda flat: loss_func(output(flat, X), y))(theta)
    shapes = [tensor.shape for tensor in _param_names(model_func, params)[1]]
    blocks = gradient.detach().split([shape.numel() for shape in shapes])
    return [block.reshape(shape) for block, shape in zip(blocks, shapes)], loss.detach()


def ggn_matrix(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    batch_size_fn: BatchSizeFn | None = None,
) -> Tensor:
    r"""Dense generalized Gauss-Newton :math:`\mathbf{J}^\top (\nabla^2_{\mathbf{f}} \mathcal{L}) \mathbf{J}`.

    :math:`\mathbf{J} = \partial \mathbf{f} / \partial \theta` is the Jacobian of the concatenated
    output :math:`\mathbf{f} = f_\theta(X_\text{all})` and :math:`\nabla^2_{\mathbf{f}} \mathcal{L}`
    the dense Hessian of ``loss_func(f, y_all)`` w.r.t. :math:`\mathbf{f}`. For per-sample losses
    this equals :math:`c \sum_n \mathbf{J}_n^\top \nabla^2_{\mathbf{f}_n} \ell_n \mathbf{J}_n`.

    Args:
        model_func: The network, an ``nn.Module``.
        loss_func: Loss with reduction ``'mean'`` or ``'sum'``.
        params: Parameters of ``model_func`` (list, or dict of named tensors).
        data: Mini-batches ``(X, y)``.
        batch_size_fn: Batch size of an input ``X``; required if ``X`` is a dict.

    Returns:
        The GGN, ``[D, D]``.
    """
    output, theta = _flat_model(model_func, params)
    X, y = _concatenated(_load(data, batch_size_fn))
    with differentiable_kernels(model_func):
        f = output(theta, X).detach()
        jac = jacrev(output)(theta, X).reshape(f.numel(), theta.numel())
        loss_hessian = _dense_hessian(lambda out: loss_func(out, y), f).reshape(f.numel(), f.numel())
    return (jac.T @ loss_hessian @ jac).detach()


def empirical_fisher_matrix(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    batch_size_fn: BatchSizeFn | None = None,
) -> Tensor:
    r"""Dense empirical Fisher (uncentered gradient covariance).

    .. math::
        \mathbf{EF} = s \sum_{n=1}^N \mathbf{g}_n \mathbf{g}_n^\top, \qquad
        \mathbf{g}_n = \nabla_\theta \ell_\text{sum}(f_\theta(x_n), y_n),

    where :math:`\ell_\text{sum}` is the loss of sample ``n`` summed over its terms, and
    :math:`s = 1` for ``reduction='sum'``, :math:`s = 1/T` for ``'mean'`` with ``T`` the total
    number of averaged terms (see the module docstring).

    Args:
        model_func: The network, an ``nn.Module``.
        loss_func: Loss with reduction ``'mean'`` or ``'sum'``.
        params: Parameters of ``model_func`` (list, or dict of named tensors).
        data: Mini-batches ``(X, y)``.
        batch_size_fn: Batch size of an input ``X``; required if ``X`` is a dict.

    Returns:
        The empirical Fisher, ``[D, D]``.
    """
    output, theta = _flat_model(model_func, params)
    X, y = _concatenated(_load(data, batch_size_fn))
    with differentiable_kernels(model_func):
        scale = _scale(loss_func, output(theta, X).detach(), y)
        grads = _per_sample_gradients(output, loss_func, theta, X, y)
    return (scale * grads.T @ grads).detach()


def fisher_mc_matrix(
    model_func: nn.Module,
    loss_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    batch_size_fn: BatchSizeFn | None = None,
    mc_samples: int = 1,
    seed: int = 2147483647,
) -> Tensor:
    r"""Dense Monte-Carlo Fisher with the same target sampling as ``FisherMCLinearOperator``.

    .. math::
        \mathbf{F} = s \sum_{n=1}^N \frac{1}{M} \sum_{m=1}^M
        \tilde{\mathbf{g}}_{nm} \tilde{\mathbf{g}}_{nm}^\top, \qquad
        \tilde{\mathbf{g}}_{nm} = \nabla_\theta \ell_\text{sum}(f_\theta(x_n), \tilde{y}_{nm}),
        \quad \tilde{y}_{nm} \sim q(\cdot \mid f_\theta(x_n)),

    with :math:`s` as in :func:`empirical_fisher_matrix` and :math:`\ell` the negative
    log-likelihood of the model's predictive distribution (cross-entropy's label smoothing left
    out). Each batch's targets are drawn, via :func:`curvkit._predictive.sample_targets`, from the
    generator of ``seed`` and the batch's position in ``data``
    (:func:`curvkit._predictive.batch_generator`). In expectation over the
    targets this is the GGN (for cross-entropy, with class indices or normalized probabilities).

    Args:
        model_func: The network, an ``nn.Module``.
        loss_func: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``.
        params: Parameters of ``model_func`` (list, or dict of named tensors).
        data: Mini-batches ``(X, y)``, in a deterministic order.
        batch_size_fn: Batch size of an input ``X``; required if ``X`` is a dict.
        mc_samples: Number ``M`` of sampled targets per sample.
        seed: Seed of the ``torch.Generator`` on the parameters' device.

    Returns:
        The MC-Fisher, ``[D, D]``.
    """
    output, theta = _flat_model(model_func, params)
    batches = _load(data, batch_size_fn)
    X_all, y_all = _concatenated(batches)
    fisher = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype, device=theta.device)
    with differentiable_kernels(model_func):
        scale = _scale(loss_func, output(theta, X_all).detach(), y_all)
        likelihood = _without_smoothing(loss_func)
        for index, (X, y) in enumerate(batches):
            if _num_loss_terms(loss_func, y, y) == 0:
                continue  # every target ignored: no loss, nothing drawn (as the operators do)
            generator = batch_generator(seed, index, theta.device)
            targets = sample_targets(loss_func, output(theta, X).detach(), y, mc_samples, generator)
            per_target = vmap(partial(_per_sample_gradients, output, likelihood, theta, X))
            grads = per_target(targets).flatten(end_dim=1)
            fisher += grads.T @ grads
    return scale / mc_samples * fisher


def jacobian_matrix(
    model_func: nn.Module,
    params: Params,
    data: Iterable[Batch],
    batch_size_fn: BatchSizeFn | None = None,
) -> Tensor:
    r"""Dense Jacobian of the model outputs.

    .. math::
        [\mathbf{J}]_{(n,c),d} = \partial [f_\theta(x_n)]_c / \partial \theta_d.

    Rows are ordered batch by batch and, within a batch, by the row-major flattened output
    (sample-major), matching ``JacobianLinearOperator``.

    Args:
        model_func: The network, an ``nn.Module``.
        params: Parameters of ``model_func`` (list, or dict of named tensors).
        data: Mini-batches ``(X, y)``; the targets are ignored.
        batch_size_fn: Batch size of an input ``X``; required if ``X`` is a dict.

    Returns:
        The Jacobian, ``[N·C, D]``.
    """
    output, theta = _flat_model(model_func, params)
    with differentiable_kernels(model_func):
        rows = [jacrev(output)(theta, X).reshape(-1, theta.numel()) for X, _ in _load(data, batch_size_fn)]
    return torch.cat(rows).detach()
