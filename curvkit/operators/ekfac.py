r"""EKFAC of a model on a data set: KFAC's eigenbasis with eigenvalues corrected in a second pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from curvkit.linear_operator import LinearOperator
from curvkit.operators._ekfac_pass import correction_sums
from curvkit.operators.kfac import KFACLinearOperator
from curvkit.structured import EigenCorrectedKroneckerLinearOperator, EigenvalueCorrections

if TYPE_CHECKING:
    from curvkit.operators.kfac_inverse import KFACInverseLinearOperator


class EKFACLinearOperator(KFACLinearOperator):
    r"""Eigenvalue-corrected KFAC (George et al. 2018) of the GGN / Fisher of a model on data.

    KFAC's factors are computed first (one pass, as :class:`~curvkit.KFACLinearOperator`) and
    eigendecomposed in float64 (negative eigenvalues of rounding clamped); a second pass replaces
    each block's eigenvalues ``λ_G ⊗ λ_A`` by the second moments of the examples' gradients in
    that basis,

    .. math::
        Λ_{ij} = \frac{1}{K} \sum_{k,n} \big((\mathbf{Q}_G^\top \mathbf{W}_{k,n} \mathbf{Q}_A)_{ij}\big)^2,

    ``W_{k,n} = Σ_r u v ᵀ`` the block's gradient of sample ``n`` for column ``k`` of the output
    factor, summed over the rows (positions, pixels) of all uses of the layers holding it, and
    ``1/K`` the loss's scale: the diagonal closest to the Fisher (GGN for ``'type-2'``, empirical
    Fisher for ``'empirical'``) in Frobenius norm among matrices with that eigenbasis. Per-example
    gradients or their Gramian, whichever is smaller, in chunks of at most ``max_entries``
    numbers (:class:`~curvkit.structured.EigenvalueCorrections`); never the whole data set's.

    Products, ``trace``, ``det``, ``logdet``, ``frobenius_norm`` (properties) and ``to_dense`` come
    from the eigenvalues; :meth:`inverse` supports exact damping only (``(Λ + δ)⁻¹`` in the
    eigenbasis), as curvlinops' does, and takes it by default.

    Args:
        max_entries: Most numbers one chunk of per-example gradients (or Gramian pairs) may hold.
        Others: As :class:`~curvkit.KFACLinearOperator`.

    Raises:
        ValueError: As :class:`~curvkit.KFACLinearOperator`, and for ``fisher_type='forward-only'``
            (no gradients to correct the eigenvalues with).
    """

    _STATE_FORMAT = "curvkit.EKFACLinearOperator/1"
    _FACTORED: type[LinearOperator] = EigenCorrectedKroneckerLinearOperator

    def __init__(
        self,
        model_func: nn.Module,
        loss_func: nn.Module,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        progressbar: bool = False,
        check_deterministic: bool = True,
        shape: tuple[int, int] | None = None,
        seed: int = 2147483647,
        fisher_type: str = "mc",
        mc_samples: int = 1,
        kfac_approx: str = "expand",
        loss_average: str | None = "batch",
        separate_weight_and_bias: bool = True,
        *,
        num_per_example_loss_terms: int | None = None,
        num_data: int | None = None,
        batch_size_fn: Callable | None = None,
        process_group: object | None = None,
        max_entries: int = 2**24,
    ):
        if getattr(fisher_type, "value", fisher_type) == "forward-only":
            raise ValueError(
                "fisher_type='forward-only' has no gradients to correct the eigenvalues with; "
                "use KFACLinearOperator for it."
            )
        self._max_entries = max_entries
        super().__init__(
            model_func,
            loss_func,
            params,
            data,
            progressbar,
            check_deterministic,
            shape,
            seed,
            fisher_type,
            mc_samples,
            kfac_approx,
            loss_average,
            separate_weight_and_bias,
            num_per_example_loss_terms=num_per_example_loss_terms,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            process_group=process_group,
        )

    def compute_eigenvalue_correction(self) -> None:
        """Compute KFAC's factors and the corrected eigenvalues now (two passes) and keep them."""
        self.compute_kronecker_factors()

    def inverse(
        self,
        damping: float | tuple[float, float] = 0.0,
        use_heuristic_damping: bool = False,
        min_damping: float = 1e-8,
        use_exact_damping: bool = True,
        cache: bool = True,
        retry_double_precision: bool = True,
    ) -> KFACInverseLinearOperator:
        """The exactly damped inverse ``(EKFAC + δ I)⁻¹``, EKFAC's only one (hence the default).

        See :class:`~curvkit.KFACInverseLinearOperator`, which, as curvlinops', asks for
        ``use_exact_damping=True`` explicitly.
        """
        return super().inverse(
            damping, use_heuristic_damping, min_damping, use_exact_damping, cache, retry_double_precision
        )

    def _computed(self) -> LinearOperator:
        return self._corrected(super()._computed().eigendecomposed())

    def _corrected(self, eigendecomposed: LinearOperator) -> LinearOperator:
        """The correction pass over the data in the eigenbases of the computed factors."""
        corrections = EigenvalueCorrections(eigendecomposed, max_entries=self._max_entries)
        sums = correction_sums(
            self._setup,
            self._plans,
            corrections.basis,
            self._fisher_type,
            self._mc_samples,
            self._seed,
            self._reduction,
            self._max_entries,
        )
        corrections.add_sums(sums, scale=1.0 / self._loss_divisor)
        return corrections.result()
