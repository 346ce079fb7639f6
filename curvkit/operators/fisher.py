"""The Monte-Carlo Fisher and the empirical Fisher (uncentered gradient covariance)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.losses import check_supported, check_unweighted
from curvkit.operators._jtlj import JTLJLinearOperator


class EFLinearOperator(JTLJLinearOperator):
    r"""Uncentered gradient covariance, often called the empirical Fisher (EF).

    .. math::
        \frac{1}{T} \sum_{n=1}^N \nabla_\theta \ell_n \, (\nabla_\theta \ell_n)^\top

    where ``ℓ_n`` is sample ``n``'s loss summed over its terms and ``T`` the total number of
    terms that ``reduction='mean'`` averages over (``T = 1`` for ``'sum'``): ``N`` for
    cross-entropy on ``[N, C]``, ``N·T`` for sequence targets, ``N·C`` for MSE/BCE with ``C``
    outputs. This convention makes the MC-Fisher equal the GGN in expectation for every loss
    (for cross-entropy, with targets that are probability distributions).
    Callables that are not ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` are taken
    to average over the batch axis only.

    Products run as ``Jᵀ Λ J`` with ``Λ`` built from the observed output-space gradients;
    no per-sample parameter gradients are stored.

    Arguments as for :class:`~curvkit.operators._curvature.CurvatureLinearOperator`.

    Raises:
        NotImplementedError: If the loss is weighted (``weight`` / ``pos_weight``).
        ValueError: As :class:`~curvkit.operators._curvature.CurvatureLinearOperator`.
    """

    @classmethod
    def _is_psd(cls, loss_func: Callable) -> bool:
        return True  # a sum of outer products

    def __init__(
        self,
        model_func: Callable,
        loss_func: Callable,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        shape: tuple[int, int] | None = None,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        cache_batches: bool = False,
        process_group: object | None = None,
    ):
        check_unweighted(loss_func, "EFLinearOperator")
        super().__init__(
            model_func,
            loss_func,
            params,
            data,
            progressbar,
            check_deterministic,
            shape,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            cache_batches=cache_batches,
            process_group=process_group,
        )

    _fisher_type = "empirical"


class FisherMCLinearOperator(JTLJLinearOperator):
    r"""Monte-Carlo approximation of the Fisher information matrix.

    .. math::
        \frac{1}{T} \sum_{n=1}^N J_n^\top \Big( \frac{1}{M} \sum_{m=1}^M
        \nabla_f \ell(f_n, \tilde y_{nm}) \nabla_f \ell(f_n, \tilde y_{nm})^\top \Big) J_n,
        \qquad \tilde y_{nm} \sim q(\cdot \mid f_n),

    with ``ℓ = -log q`` and the scaling ``T`` of :class:`EFLinearOperator`; in expectation over
    the samples it equals the GGN. The operator is one deterministic draw: every product
    draws each batch's targets from a generator seeded by ``seed`` and the batch's position
    (:func:`curvkit._predictive.batch_generator`), so batches must come in the same order each time
    (no shuffling), and data-parallel products over shards draw what one process draws on all
    the data. Create instances with different seeds for independent draws.

    Args:
        seed: Seed of the generator that draws the targets. Default: ``2147483647``.
        mc_samples: Number of samples ``M`` per data point. Default: ``1``.
        model_func, loss_func, params, data, progressbar, check_deterministic, num_data,
            batch_size_fn, cache_batches, process_group: As for
            :class:`~curvkit.operators._curvature.CurvatureLinearOperator` (the reference's
            signature has ``seed`` and ``mc_samples`` where the others have ``shape``).

    Raises:
        NotImplementedError: If the loss is not ``MSELoss``, ``CrossEntropyLoss`` or
            ``BCEWithLogitsLoss`` (a subclass that overrides ``forward`` included), or is
            weighted (``weight`` / ``pos_weight``).
        ValueError: If ``mc_samples`` is not a positive integer or ``seed`` not an integer.
    """

    @classmethod
    def _is_psd(cls, loss_func: Callable) -> bool:
        return True  # a sum of outer products

    def __init__(
        self,
        model_func: Callable,
        loss_func: Callable,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        seed: int = 2147483647,
        mc_samples: int = 1,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        cache_batches: bool = False,
        process_group: object | None = None,
    ):
        check_supported(loss_func, "FisherMCLinearOperator")
        self._seed, self._num_mc_samples = as_integer(seed, "seed"), as_integer(mc_samples, "mc_samples", 1)
        super().__init__(
            model_func,
            loss_func,
            params,
            data,
            progressbar,
            check_deterministic,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            cache_batches=cache_batches,
            process_group=process_group,
        )

    _fisher_type = "mc"

    def _signature(self) -> str:
        return f"{super()._signature()}, seed {self._seed}"

    def _start_product(self) -> int:
        # with caching, the first product's draw is kept: the same one the batch's seed gives
        return self._seed

    def _mc_samples(self) -> int:
        return self._num_mc_samples
