"""What curvkit knows about loss functions: reduction, scale, output-space curvature.

Notation: a mini-batch loss ``L_b = c_b Σ_n ℓ_n(f_n, y_n)`` where ``ℓ_n`` is the loss of sample
``n`` *summed* over its terms (output entries for MSE/BCE, sequence positions for cross-entropy)
and ``c_b`` is ``1`` for ``reduction='sum'`` and ``1 / (number of averaged terms)`` for ``'mean'``.
All output-space quantities here refer to the batch loss ``L_b`` as the user's ``loss_func``
computes it, so that every reduction convention is handled by one rule. Sampling from the
predictive distribution a loss defines (MC-Fisher's targets) is :mod:`curvkit._predictive`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torch.func import grad, vjp, vmap
from torch.nn import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
    SoftMarginLoss,
)

LossFunction = Callable[[Tensor, Tensor], Tensor]

#: Losses whose predictive distribution curvkit can sample from (MC-Fisher) and whose
#: output-space Hessian has a closed form.
SUPPORTED_LOSSES = (MSELoss, CrossEntropyLoss, BCEWithLogitsLoss)
#: ``torch.nn`` losses whose ``'mean'`` averages over every entry of the output.
ENTRYWISE_LOSSES = (
    MSELoss,
    BCEWithLogitsLoss,
    BCELoss,
    L1Loss,
    SmoothL1Loss,
    HuberLoss,
    SoftMarginLoss,
    KLDivLoss,
)
_KNOWN_LOSSES = (*SUPPORTED_LOSSES, NLLLoss, *ENTRYWISE_LOSSES)


def known_loss(loss_func: LossFunction) -> type | None:
    """The ``torch.nn`` loss whose computation ``loss_func`` is, or ``None``.

    A subclass counts only if it keeps its parent's ``forward``: one that overrides it (a
    temperature, a penalty, ...) computes something else, so closed forms and term counts of the
    parent would be wrong for it; it is treated like any other callable.
    """
    for cls in _KNOWN_LOSSES:
        if isinstance(loss_func, cls) and type(loss_func).forward is cls.forward:
            return cls
    return None


def is_supported(loss_func: LossFunction) -> bool:
    """Whether ``loss_func`` is one of :data:`SUPPORTED_LOSSES` (not a subclass that changes it)."""
    return known_loss(loss_func) in SUPPORTED_LOSSES


def reduction_of(loss_func: LossFunction) -> str:
    """The reduction (``'mean'`` or ``'sum'``) of ``loss_func``.

    Read off its ``reduction`` attribute, or the ``reduction`` keyword of a
    ``functools.partial`` (``partial(F.mse_loss, reduction='sum')``). Other callables are taken
    to average over the batch axis. ``'batchmean'`` (``KLDivLoss``: the sum over the batch
    divided by its size) is a ``'mean'`` over the batch axis.

    Raises:
        ValueError: If the reduction is none of ``'mean'``, ``'sum'`` and ``'batchmean'``.
    """
    if isinstance(loss_func, partial):
        reduction = loss_func.keywords.get("reduction", "mean")
    else:
        reduction = getattr(loss_func, "reduction", "mean")
    if reduction not in ("mean", "sum", "batchmean"):
        raise ValueError(
            f"loss_func must reduce with 'mean', 'sum' or 'batchmean', got reduction={reduction!r}."
        )
    return "mean" if reduction == "batchmean" else reduction


def is_class_index_target(loss_func: LossFunction, target: Tensor) -> bool:
    """Whether ``target`` holds class indices of a cross-entropy or NLL loss (not probabilities)."""
    return known_loss(loss_func) in (CrossEntropyLoss, NLLLoss) and not target.is_floating_point()


def num_loss_terms(loss_func: LossFunction, target: Tensor, batch_size: int) -> float:
    """The number of terms ``K_b`` that ``reduction='mean'`` divides one batch's sum by.

    MSE, BCE and the other entrywise losses (:data:`ENTRYWISE_LOSSES`) average over all entries
    (as many as the target has); cross-entropy (and NLL) over all positions (``N`` for
    ``[N, C]`` outputs, ``N·T`` for ``[N, C, T]``) except those whose class-index target is
    ``ignore_index``, and with class weights ``w`` over their total weight ``Σ w_{y}`` (as
    ``torch`` does). Any other callable is taken to average over the batch axis only
    (``batch_size`` terms): a callable that averages over all ``C`` entries of a sample
    (``lambda f, y: F.mse_loss(f, y)``) gets the right Hessian and GGN, but an empirical Fisher
    ``C`` times too small (the MC-Fisher refuses callables); pass the ``nn`` loss instead.
    Summed over batches, these give the full data set's divisor.
    """
    kind = known_loss(loss_func)
    if kind in ENTRYWISE_LOSSES and loss_func.reduction != "batchmean":  # batchmean: the batch axis
        return float(target.numel())
    if kind in (CrossEntropyLoss, NLLLoss):
        if not is_class_index_target(loss_func, target):
            return float(target.numel() // target.shape[1])
        kept = target != loss_func.ignore_index
        if loss_func.weight is not None:
            return float(loss_func.weight.to(target.device)[target[kept]].sum())
        return float(kept.sum())  # a count, not the kept entries: no boolean indexing
    return float(batch_size)


def batch_loss_scale(
    loss_func: LossFunction, output: Tensor, target: Tensor, loss_terms: float | None = None
) -> float:
    """The factor ``c_b`` in ``L_b = c_b Σ_n ℓ_n``.

    ``loss_terms``: the batch's :func:`num_loss_terms` if already counted (the engine counts on
    the host, where counting ignored targets costs no device synchronization).
    """
    if reduction_of(loss_func) == "sum":
        return 1.0
    if known_loss(loss_func) in (MSELoss, BCEWithLogitsLoss):  # torch broadcasts (and warns)
        return 1.0 / max(math.prod(torch.broadcast_shapes(output.shape, target.shape)), 1)
    if loss_terms is None:
        loss_terms = num_loss_terms(loss_func, target, output.shape[0])
    # no terms (every target ignored): no loss, no curvature; class weights may sum to less than 1
    return 1.0 / loss_terms if loss_terms > 0 else 0.0


def _target_mass(loss_func: LossFunction, output: Tensor, target: Tensor) -> Tensor | float:
    """``Σ_c w_c q_c`` per position, ``q`` cross-entropy's target distribution (after smoothing).

    The Hessian of ``-Σ_c w_c q_c log softmax(f)_c`` is ``(Σ_c w_c q_c)(diag p − p pᵀ)``: ``1`` for
    class indices and normalized probabilities without class weights ``w``, anything for
    unnormalized (e.g. multi-hot) targets. With class indices ``y`` and smoothing ``ε``,
    ``q = (1 − ε) e_y + ε / C``, so the mass is ``(1 − ε) w_y + (ε / C) Σ_c w_c`` (as ``torch``
    weighs the smoothing term).
    """
    weight, smoothing = loss_func.weight, loss_func.label_smoothing
    if is_class_index_target(loss_func, target):
        if weight is None:
            return 1.0
        weight = weight.to(output)
        kept = target.masked_fill(target == loss_func.ignore_index, 0)  # ignored: masked elsewhere
        mass = (1.0 - smoothing) * weight[kept] + smoothing / output.shape[1] * weight.sum()
        return mass.unsqueeze(1)
    smoothed = (1.0 - smoothing) * target + smoothing / output.shape[1]
    if weight is not None:
        smoothed = smoothed * weight.to(output).reshape(-1, *([1] * (output.ndim - 2)))
    return smoothed.sum(dim=1, keepdim=True)


def _bce_curvature(loss_func: BCEWithLogitsLoss, output: Tensor, target: Tensor) -> Tensor:
    """``∂²ℓ/∂f²`` entrywise for BCE-with-logits: ``w (p_w y + 1 − y) σ(f)(1 − σ(f))``.

    ``w`` (``weight``) and ``p_w`` (``pos_weight``) broadcast as ``torch`` broadcasts them.
    """
    probability = output.sigmoid()
    curvature = probability * (1.0 - probability)
    if loss_func.pos_weight is not None:
        curvature = curvature * (loss_func.pos_weight.to(output) * target + 1.0 - target)
    if loss_func.weight is not None:
        curvature = curvature * loss_func.weight.to(output)
    return curvature


def _is_weighted(loss_func: LossFunction) -> bool:
    return (
        getattr(loss_func, "weight", None) is not None or getattr(loss_func, "pos_weight", None) is not None
    )


def _has_closed_form(loss_func: LossFunction) -> bool:
    return is_supported(loss_func)


def check_unweighted(loss_func: LossFunction, what: str) -> None:
    """Raise for class-weighted losses, whose per-sample gradients have no Fisher meaning.

    Raises:
        NotImplementedError: If ``loss_func`` has ``weight`` or ``pos_weight`` set.
    """
    if _is_weighted(loss_func):
        raise NotImplementedError(
            f"loss_func with weight/pos_weight is not supported by {what}: a weighted mean is not an "
            "average of per-sample negative log-likelihoods."
        )


def check_supported(loss_func: LossFunction, what: str, weighted: bool = False) -> None:
    """Raise unless ``loss_func`` is one of :data:`SUPPORTED_LOSSES`, unweighted unless ``weighted``.

    Raises:
        NotImplementedError: Naming ``loss_func`` and the supported losses, or if it is weighted.
    """
    if not is_supported(loss_func):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LOSSES)
        raise NotImplementedError(
            f"loss_func must be one of {names} (not a subclass that overrides forward) for {what}, "
            f"got {type(loss_func).__name__}."
        )
    if not weighted:
        check_unweighted(loss_func, what)


def output_hessian_matmat(
    loss_func: LossFunction, output: Tensor, target: Tensor, tangents: Tensor, loss_terms: float | None = None
) -> Tensor:
    """Multiply ``∇²_f L_b(f, y)`` onto ``k`` output-shaped tangents ``[k, *output.shape]``.

    Closed forms (``p = softmax(f)`` over the class axis, ``σ`` the sigmoid):

    - MSE: ``2 c_b v``;
    - cross-entropy: ``c_b (p ⊙ v − p (pᵀ v))`` at every (non-ignored) position, times the
      (class-weighted) mass ``Σ_c w_c q_c`` of the target (:func:`_target_mass`);
    - BCE-with-logits: ``c_b w (p_w y + 1 − y) σ(f)(1 − σ(f)) ⊙ v`` (``weight`` ``w`` and
      ``pos_weight`` ``p_w``, if set).

    Any other loss uses reverse-over-reverse differentiation of
    ``loss_func`` with respect to its first argument. ``loss_terms``: see :func:`batch_loss_scale`.
    """
    output = output.detach()
    if not _has_closed_form(loss_func):
        _, hvp = vjp(grad(lambda f: loss_func(f, target)), output)
        return vmap(lambda tangent: hvp(tangent)[0])(tangents)
    scale = batch_loss_scale(loss_func, output, target, loss_terms)
    if isinstance(loss_func, MSELoss):
        return 2.0 * scale * tangents
    if isinstance(loss_func, BCEWithLogitsLoss):
        return scale * _bce_curvature(loss_func, output, target) * tangents
    probability = output.softmax(dim=1)
    result = probability * tangents - probability * (probability * tangents).sum(dim=2, keepdim=True)
    if is_class_index_target(loss_func, target):
        kept = (target != loss_func.ignore_index).unsqueeze(1).to(result.dtype)
        result = result * kept
    return scale * _target_mass(loss_func, output, target) * result


def hessian_sqrt_columns(loss_func: LossFunction, output: Tensor, symmetric: bool = False) -> int:
    """``K``, the columns per sample of :func:`output_hessian_sqrt`'s factor for outputs like ``output``.

    The output entries per sample, but ``C − 1`` per position for cross-entropy over ``C > 1``
    classes, whose Hessian has rank ``C − 1`` there (unless ``symmetric``).
    """
    per_sample = output[0].numel()
    if not symmetric and isinstance(loss_func, CrossEntropyLoss) and output.ndim > 1 and output.shape[1] > 1:
        return per_sample // output.shape[1] * (output.shape[1] - 1)
    return per_sample


def output_hessian_sqrt(
    loss_func: LossFunction,
    output: Tensor,
    target: Tensor,
    loss_terms: float | None = None,
    symmetric: bool = False,
) -> Tensor:
    r"""A factor ``S`` with ``S Sᵀ = ∇²_f L_b`` that is block-diagonal over samples.

    Closed forms: MSE ``√(2 c_b) I``; BCE the root of :func:`output_hessian_matmat`'s factor.
    Cross-entropy, at every position, ``√(c_b m)`` times (``m`` the target's mass, see
    :func:`output_hessian_matmat`) a factor of ``diag(p) − p pᵀ = D (I − q qᵀ) D`` with
    ``q = √p`` (a unit vector, as ``Σ p = 1``) and ``D = diag(q)``, of ``C − 1`` columns instead
    of ``C``: the Householder reflection ``H = I − 2 v vᵀ / (vᵀ v)``, ``v = q + e_1``, maps
    ``q`` to ``−e_1``, so ``I − q qᵀ = H (I − e_1 e_1ᵀ) H`` and the columns ``2, …, C`` of
    ``D H``, ``q ⊙ (e_j − 2 v v_j / (vᵀ v))``, square to it (``vᵀ v ≥ 2``: no cancellation).
    Type-2 curvature pulls every column back through the model: ``C − 1`` columns save one
    backward pass in ``C``. ``symmetric``: the symmetric root ``diag(q) − p qᵀ`` instead, ``C``
    columns (``(diag q − p qᵀ)(diag q − q pᵀ) = diag p − p pᵀ``), for a caller whose result
    depends on the number of columns, not only on ``S Sᵀ``. ``loss_terms``: see
    :func:`batch_loss_scale`. :func:`output_hessian_sqrt_columns` gives the columns a range at
    a time.

    Returns:
        ``K`` columns (:func:`hessian_sqrt_columns`) stacked as ``[K, *output.shape]``: column
        ``k`` holds, for every sample ``n``, the ``k``-th column of sample ``n``'s factor.

    Raises:
        NotImplementedError: For losses without a closed form.
    """
    return output_hessian_sqrt_columns(loss_func, output, target, loss_terms, symmetric)()


def output_hessian_sqrt_columns(
    loss_func: LossFunction,
    output: Tensor,
    target: Tensor,
    loss_terms: float | None = None,
    symmetric: bool = False,
) -> Callable[..., Tensor]:
    """:func:`output_hessian_sqrt` by ranges: ``columns(start, stop)``, its columns ``start, …, stop − 1``.

    What all columns share (the probabilities, the reflections' vectors) is computed here once;
    a range costs memory and work in proportion to its columns (no ``[K, K]`` identity), so a
    caller can take thousands of columns a few at a time.

    Raises:
        NotImplementedError: For losses without a closed form.
    """
    if not _has_closed_form(loss_func):
        raise NotImplementedError(f"No closed-form Hessian square root for {type(loss_func).__name__}.")
    output = output.detach()
    scale = batch_loss_scale(loss_func, output, target, loss_terms)
    num_columns = hessian_sqrt_columns(loss_func, output, symmetric)
    first = output[0].numel() - num_columns  # cross-entropy: classes 2…C are the last K entries
    if isinstance(loss_func, MSELoss):
        scaled = (2.0 * scale) ** 0.5

        def columns_of(units: Tensor) -> Tensor:
            return scaled * units.expand(units.shape[0], *output.shape)

    elif isinstance(loss_func, BCEWithLogitsLoss):
        curvature = (scale * _bce_curvature(loss_func, output, target)).sqrt()

        def columns_of(units: Tensor) -> Tensor:
            return curvature * units

    elif output.shape[1] == 1:  # one class: p = 1, Λ = 0

        def columns_of(units: Tensor) -> Tensor:
            return output.new_zeros(units.shape[0], *output.shape)

    else:
        columns_of = _cross_entropy_root(loss_func, output, target, scale, symmetric)

    def columns(start: int = 0, stop: int | None = None) -> Tensor:
        start, stop, _ = slice(start, stop).indices(num_columns)
        # the unit vectors e_j of the columns' entries, one per sample: [k, 1, *output.shape[1:]]
        return columns_of(_unit_rows(first + start, first + max(stop, start), output).unsqueeze(1))

    return columns


def _cross_entropy_root(
    loss_func: LossFunction, output: Tensor, target: Tensor, scale: float, symmetric: bool
) -> Callable[[Tensor], Tensor]:
    """Cross-entropy's root (:func:`output_hessian_sqrt`) at given unit vectors ``e_(c,t)``."""
    probability = output.softmax(dim=1)
    root = probability.sqrt()  # q, per position
    weight = (scale * _target_mass(loss_func, output, target)) ** 0.5
    if is_class_index_target(loss_func, target):  # zero at ignored positions
        weight = weight * (target != loss_func.ignore_index).unsqueeze(1).to(output.dtype)
    if symmetric:  # column (c, t): q_ct (e_c − p_:t) at position t, zero elsewhere
        return lambda units: weight * (root * units - (root * units).sum(dim=2, keepdim=True) * probability)
    reflected = root.clone()
    reflected.narrow(1, 0, 1).add_(1.0)  # v = q + e_1 at every position
    reflected *= (2.0 / (reflected * reflected).sum(dim=1, keepdim=True)) ** 0.5  # v √(2 / vᵀ v)

    def reflected_columns(units: Tensor) -> Tensor:  # q ⊙ (e_j − 2 v v_j / (vᵀ v))
        along = (reflected * units).sum(dim=2, keepdim=True)  # [k, N, 1, ...]: at column k's position
        return weight * root * (units - reflected * along)

    return reflected_columns


def _unit_rows(first: int, stop: int, output: Tensor) -> Tensor:
    """Unit vectors ``e_first, …, e_{stop−1}`` of a sample's flattened output: ``[k, *output.shape[1:]]``."""
    rows = output.new_zeros(stop - first, output[0].numel())
    rows.diagonal(offset=first).fill_(1.0)
    return rows.view(stop - first, *output.shape[1:])


def output_gradients(loss_func: LossFunction, output: Tensor, target: Tensor) -> Tensor:
    """The gradient ``∇_f L_b(f, y)`` of the batch loss as ``loss_func`` computes it.

    Returns:
        Tensor of ``output``'s shape; row ``n`` is ``c_b ∇_{f_n} ℓ_n``.
    """
    with torch.enable_grad():
        leaf = output.detach().requires_grad_()
        return torch.autograd.grad(loss_func(leaf, target), leaf)[0]
