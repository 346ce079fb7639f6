"""Sampling from the predictive distribution ``q(y | f)`` whose negative log-likelihood a loss is.

The Monte-Carlo Fisher's targets and their gradients (closed forms), and the generator of each
batch's draws: ``E_{ỹ ~ q}[∇ℓ(f, ỹ) ∇ℓ(f, ỹ)ᵀ] = ∇²_f ℓ`` for every supported loss, so that the
MC-Fisher equals the GGN in expectation. Notation as in :mod:`curvkit.losses`.
"""

from __future__ import annotations

import torch
from torch import Generator, Tensor
from torch.nn import BCEWithLogitsLoss, MSELoss

from curvkit.losses import LossFunction, batch_loss_scale, check_supported, is_class_index_target


def sampled_output_gradients(
    loss_func: LossFunction,
    output: Tensor,
    targets: Tensor,
    observed: Tensor,
    loss_terms: float | None = None,
) -> Tensor:
    """Gradients ``c_b ∇_f (−log q(ỹ_m | f))`` for targets ``ỹ_m`` drawn by :func:`sample_targets`.

    The negative log-likelihood of the model's predictive distribution, in closed form: MSE
    ``2 (f − ỹ)``, BCE ``σ(f) − ỹ``, cross-entropy ``softmax(f) − onehot(ỹ)`` (zero where
    ``observed`` is ignored). Cross-entropy's ``label_smoothing`` is left out on purpose: the
    smoothed loss is no likelihood of the samples, its gradients have mean ``ε (p − 1/C) ≠ 0``,
    while the Hessian with respect to ``f``, which the Fisher must equal in expectation, does
    not depend on the smoothing. ``c_b`` is that of the batch with its observed targets.

    Args:
        loss_func: One of :data:`SUPPORTED_LOSSES`.
        output: Model output ``f``.
        targets: Draws ``[M, *target_shape]``.
        observed: The batch's observed targets.
        loss_terms: See :func:`batch_loss_scale`.

    Returns:
        ``[M, *output.shape]``.
    """
    output = output.detach()
    scale = batch_loss_scale(loss_func, output, observed, loss_terms)
    if isinstance(loss_func, MSELoss):
        return 2.0 * scale * (output - targets)
    if isinstance(loss_func, BCEWithLogitsLoss):
        return scale * (output.sigmoid() - targets)
    probability = output.softmax(dim=1)
    ignored = targets == loss_func.ignore_index
    # scatter, not F.one_hot: that checks the class range, a device synchronization per batch
    gradients = probability.new_zeros((targets.shape[0], *probability.shape))
    gradients.scatter_(2, targets.masked_fill(ignored, 0).unsqueeze(2), -1.0).add_(probability)
    return gradients.mul_(scale).masked_fill_(ignored.unsqueeze(2), 0.0)


_SEED_STRIDE = 0x9E3779B97F4A7C15
"""Odd 64-bit constant (the golden ratio's fraction) that spreads the batches' seeds apart."""


def batch_generator(seed: int, batch_index: int, device: torch.device) -> Generator:
    """The generator that draws the sampled targets of batch ``batch_index`` (counted from 0).

    Each batch has its own seed, ``seed`` for the first, so that the draws depend on the batch's
    position in the data only, not on which process iterates it (data-parallel products over
    shards give the draws of one process on all the data).
    """
    batch_seed = seed if batch_index == 0 else (seed + batch_index * _SEED_STRIDE) % 2**64
    return torch.Generator(device=device).manual_seed(batch_seed)


def sample_targets(
    loss_func: LossFunction, output: Tensor, observed: Tensor, mc_samples: int, generator: Generator
) -> Tensor:
    """Draw ``mc_samples`` targets from the model's predictive distribution ``q(· | f)``.

    The distribution is the one whose negative log-likelihood is ``ℓ`` (up to constants):

    - MSE ``(f − y)²``: ``y ~ N(f, I/2)``, so that ``E[∇ℓ ∇ℓᵀ] = ∇²ℓ = 2 I``;
    - cross-entropy: class indices ``y ~ Categorical(softmax(f))`` along dim 1, per position,
      and ``ignore_index`` where the observed class-index target is ignored (such positions are
      not part of the loss, so they carry no Fisher information either);
    - BCE-with-logits: ``y ~ Bernoulli(σ(f))``.

    Args:
        loss_func: One of :data:`SUPPORTED_LOSSES`.
        output: Model output ``f`` (detached internally).
        observed: The batch's observed targets (only their ignored positions matter).
        mc_samples: ``M``.
        generator: Source of randomness, consumed sequentially.

    Returns:
        Targets ``[M, *target_shape]``.
    """
    check_supported(loss_func, "sampling targets")
    output = output.detach()
    if isinstance(loss_func, MSELoss):
        noise = torch.randn(
            (mc_samples, *output.shape), generator=generator, dtype=output.dtype, device=output.device
        )
        return output + noise * 0.5**0.5
    if isinstance(loss_func, BCEWithLogitsLoss):
        probability = output.sigmoid().expand(mc_samples, *output.shape)
        return torch.bernoulli(probability, generator=generator)
    logits = output.movedim(1, -1)  # [N, (T,) C]
    # the exponential race (Gumbel-max): argmax_c p_c / E_c with E_c ~ Exp(1) is c with
    # probability p_c, and so is argmax_c (f_c − log E_c), as log p_c = f_c − logsumexp(f):
    # no softmax. Unlike torch.multinomial, which checks its input with .item() when drawing
    # one sample, it never waits for the device. E = −log U for U ~ U[0, 1): faster than
    # exponential_ on the CPU (design notes, "Measurements behind the code"); U = 0, once in
    # 2²⁴ draws in float32, only drops that class from that race
    races = torch.empty((mc_samples, *logits.shape), dtype=logits.dtype, device=logits.device)
    draws = races.uniform_(generator=generator).log_().neg_().log_().neg_().add_(logits).argmax(dim=-1)
    if is_class_index_target(loss_func, observed):
        draws = draws.masked_fill(observed == loss_func.ignore_index, loss_func.ignore_index)
    return draws
