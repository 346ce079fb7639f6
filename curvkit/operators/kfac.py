r"""KFAC of a model on a data set: its factors in one pass, its algebra from :mod:`curvkit.structured`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from curvkit._boundary import as_integer
from curvkit.linear_operator import LinearOperator
from curvkit.losses import SUPPORTED_LOSSES, check_unweighted, is_supported, reduction_of
from curvkit.operators._closed_forms import HeldClosedForms
from curvkit.operators._kfac_arguments import (
    LOSS_AVERAGES,
    FisherType,
    KFACType,
    choice,
    output_shape_of_targets,
    positions_per_example,
)
from curvkit.operators._kfac_factors import factor_sums
from curvkit.operators._kfac_plan import BlockPlan, block_plans
from curvkit.operators._setup import GradientAndLoss, ModelDataSetup
from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator

if TYPE_CHECKING:
    from curvkit.operators.kfac_inverse import KFACInverseLinearOperator

__all__ = ["FisherType", "KFACLinearOperator", "KFACType"]


class KFACLinearOperator(HeldClosedForms, GradientAndLoss, LinearOperator):
    r"""Kronecker-factored approximate curvature (KFAC) of the GGN / Fisher of a model on data.

    Per layer (``nn.Linear`` with any leading dimensions, ``nn.Conv1d/2d/3d``, ``nn.Embedding``),
    the block of the curvature matrix over the layer's weight (and bias) is approximated by a
    Kronecker product ``G ⊗ A`` (Martens & Grosse 2015; Grosse & Martens 2016 for
    convolutions; Eschenhagen et al. 2023 for weight sharing): ``A`` the second moment of the
    layer's inputs, ``G`` that of the output gradients of ``Λ``'s factor, ``Λ`` chosen by
    ``fisher_type``:

    - ``'type-2'``: the loss's Hessian in output space (the GGN's KFAC; exact for a deep
      linear network with MSE);
    - ``'mc'``: ``mc_samples`` gradients at targets drawn from the model's likelihood;
    - ``'empirical'``: the gradients at the observed targets;
    - ``'forward-only'``: ``G = I`` (FOOF, Benzing 2022), no backward pass.

    With ``p = (vec W, b)`` flattened row by row (PyTorch's order, as every curvkit operator
    flattens parameters), a layer's block is ``G ⊗ A`` — output factor first: with ``W ∈
    ℝ^{out×in}``, ``(G ⊗ A) vec W = vec(G W Aᵀ)``. Papers and curvlinops' docstring write
    ``A ⊗ G`` for column-stacked ``vec``; it is the same matrix in the other order of entries.
    An embedding's table ``[V, d]`` has its inputs along the rows: its block is ``A ⊗ G`` with
    ``A`` the diagonal of token counts.

    Weight sharing (a sequence's positions, a convolution's pixels, a module called several
    times, a weight tied between modules): ``'expand'`` sums over every row of every use,
    ``'reduce'`` sums the gradients and averages the inputs over a sample's rows first
    (docs/design-notes.md, "KFAC's factor pass").

    The factors are computed in one pass over the data at the first product or closed form (or
    by :meth:`compute_kronecker_factors`), symmetrized and kept: create a new operator when the
    model changes. They are scaled as the loss is reduced over the whole data set: for
    ``reduction='mean'`` by the total number of terms ``K`` (samples; positions for sequence
    targets, ``ignore_index`` excluded; output entries for MSE / BCE), for ``'sum'`` not at all
    — so that, as for the other operators, the result does not depend on how the data is split
    into batches.

    Args:
        model_func: The network (an ``nn.Module``).
        loss_func: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss``.
        params: The parameters (list or dict of named tensors); each must sit in a supported layer.
        data: Iterable of ``(X, y)`` mini-batches.
        progressbar: Show a progress bar during the factor pass.
        check_deterministic: Check that model and data are deterministic (one extra forward pass
            over the data now; the factor pass is compared with it).
        shape: ``(D, D)`` or ``None``; checked.
        seed: Seed of the targets drawn for ``'mc'``.
        fisher_type: ``'type-2'``, ``'mc'``, ``'empirical'`` or ``'forward-only'`` (or a
            :class:`FisherType`).
        mc_samples: Samples per datum for ``'mc'``; must be 1 otherwise.
        kfac_approx: ``'expand'`` or ``'reduce'`` (or a :class:`KFACType`). Embeddings always
            take ``'expand'`` (their input factor is diagonal only there).
        loss_average: How the loss averages, checked against it: ``None`` for
            ``reduction='sum'``; ``'batch'`` for a mean over the examples (one term per example
            besides the likelihood's axis); ``'batch+sequence'`` for a mean over examples and
            positions. The scale itself is counted from the loss (see above).
        separate_weight_and_bias: One block for a weight and one for its bias (else one joined
            block ``[W b]``, whose input factor is that of ``(a, 1)``).
        num_per_example_loss_terms: curvlinops 3.x's argument: if given, checked against the
            data's positions per example (the scale is counted from the loss).
        num_data: Number of samples (counted if ``None``).
        batch_size_fn: Batch size of a dict input.
        process_group: ``None`` (this process only), or a ``torch.distributed`` process group:
            ``data`` is this rank's shard, and the factors' sums and loss-term counts are added
            over the ranks, so every rank gets the factors of all the data; ``'mc'`` draws each
            batch's targets from ``seed`` and the batch's position, as one process would
            (docs/distributed.md).

    Raises:
        ValueError: For an unsupported loss, an unknown ``fisher_type`` / ``kfac_approx`` /
            ``loss_average``, ``mc_samples != 1`` with a non-MC type, ``loss_average``
            inconsistent with the loss's reduction or targets, a bad ``shape``.
        NotImplementedError: For a parameter outside a supported layer (naming the layer and its
            parameter), a convolution with ``groups > 1``, a class-weighted loss with ``'mc'`` /
            ``'empirical'``.
    """

    _STATE_FORMAT = "curvkit.KFACLinearOperator/1"
    _FACTORED: type[LinearOperator] = KroneckerFactoredLinearOperator

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
    ):
        self._fisher_type = choice(fisher_type, FisherType, "fisher_type")
        self._kfac_approx = choice(kfac_approx, KFACType, "kfac_approx")
        self._mc_samples = as_integer(mc_samples, "mc_samples", 1)
        self._seed = as_integer(seed, "seed")
        if self._fisher_type != "mc" and self._mc_samples != 1:
            raise ValueError(
                f"mc_samples must be 1 for fisher_type={self._fisher_type!r} (it counts Monte-Carlo "
                f"samples of fisher_type='mc'), got {self._mc_samples}."
            )
        if not is_supported(loss_func):
            names = ", ".join(cls.__name__ for cls in SUPPORTED_LOSSES)
            raise ValueError(f"loss_func must be one of {names} for KFAC, got {type(loss_func).__name__}.")
        if self._fisher_type in ("mc", "empirical"):
            check_unweighted(loss_func, f"KFAC with fisher_type={self._fisher_type!r}")
        if not isinstance(separate_weight_and_bias, bool):
            raise TypeError(f"separate_weight_and_bias must be a bool, got {separate_weight_and_bias!r}.")
        self._reduction = reduction_of(loss_func)
        self._loss_average = self._checked_loss_average(loss_average)
        self._separate = separate_weight_and_bias
        if not isinstance(model_func, nn.Module):
            raise ValueError(f"model_func must be an nn.Module for KFAC, got {type(model_func).__name__}.")
        self._setup = ModelDataSetup(
            model_func,
            loss_func,
            params,
            data,
            progressbar=progressbar,
            num_data=num_data,
            batch_size_fn=batch_size_fn,
            process_group=process_group,
            probe_first_batch=False,  # the factor pass checks the first output it computes
            signature=(
                f"{type(self).__name__}, fisher_type {self._fisher_type}, kfac_approx {self._kfac_approx}, "
                f"mc_samples {self._mc_samples}, seed {self._seed}, separate_weight_and_bias {self._separate}"
            ),
        )
        layout = self._setup.model.layout
        if shape is not None and tuple(shape) != (layout.dim, layout.dim):
            raise ValueError(
                f"shape must be ({layout.dim}, {layout.dim}) for these params, got {tuple(shape)}."
            )
        self._num_per_example_loss_terms = (
            None
            if num_per_example_loss_terms is None
            else as_integer(num_per_example_loss_terms, "num_per_example_loss_terms", 1)
        )
        # counted from the targets now (as curvlinops does), checked on the output in the pass;
        # by a partial that does not hold the operator: through its setup it would form a cycle,
        # which kept the factors in memory until the garbage collector ran
        check_positions = partial(
            _check_positions, loss_func, self._loss_average, self._num_per_example_loss_terms
        )
        check_positions(output_shape_of_targets(loss_func, self._setup.first_targets))
        self._setup.output_checks.append(lambda output: check_positions(output.shape))
        layer_map = self._setup.layer_map
        if layer_map.unsupported:
            raise NotImplementedError(
                "KFAC supports parameters of nn.Linear, nn.Conv1d/2d/3d (groups=1) and nn.Embedding "
                "layers only; found "
                + "; ".join(layer_map.unsupported[index] for index in sorted(layer_map.unsupported))
                + "."
            )
        self._plans: list[BlockPlan] = block_plans(layer_map, separate_weight_and_bias)
        super().__init__(
            (layout.dim, layout.dim),
            dtype=self._setup.model.dtype,
            device=self._setup.model.device,
            psd=True,
            in_layout=layout,
            out_layout=layout,
        )
        self._probe = self._setup.shared_pass_probe() if check_deterministic else None
        self._factored: LinearOperator | None = None

    # ----------------------------------------------------------------- arguments
    def _checked_loss_average(self, loss_average: object) -> str | None:
        if loss_average not in LOSS_AVERAGES:
            raise ValueError(
                f"loss_average must be one of {', '.join(map(repr, LOSS_AVERAGES))}, got {loss_average!r}."
            )
        if loss_average is None and self._reduction != "sum":
            raise ValueError(
                "loss_average=None means the loss is a sum, but loss_func has "
                f"reduction={self._reduction!r}: pass loss_average='batch' (or 'batch+sequence')."
            )
        if loss_average is not None and self._reduction == "sum":
            raise ValueError(
                f"loss_average={loss_average!r} means the loss is a mean, but loss_func has "
                "reduction='sum': pass loss_average=None."
            )
        return loss_average

    # ----------------------------------------------------------------- factors
    def compute_kronecker_factors(self) -> None:
        """Compute the Kronecker factors now (one pass over the data) and keep them."""
        self._factored = self._computed()

    def _computed(self) -> LinearOperator:
        factors, divisor = factor_sums(
            self._setup,
            self._plans,
            self._fisher_type,
            self._kfac_approx,
            self._mc_samples,
            self._seed,
            self._probe,
            self._reduction,
        )
        self._probe = None  # compared once, with the first factor pass
        self._loss_divisor = divisor
        tensors = self._setup.model.tensors
        blocks, identities = [], {}
        for plan, factor in zip(self._plans, factors):
            output, output_rank = factor.output, round(factor.output_rows)
            if output is None:  # 'forward-only': one identity per size (a bias shares its weight's)
                size = plan.output_dim(tensors)
                if size not in identities:
                    identities[size] = torch.eye(size, dtype=self.dtype, device=self.device)
                output, output_rank = identities[size], None
            inputs = None if plan.bias_only else factor.input
            # the rows summed bound each factor's rank: EKFAC's and exact damping's
            # eigendecompositions of a wide factor from few rows take O(n² rank)
            input_rank = None if inputs is None else round(factor.input_rows)
            ranks = {"output_rank": output_rank, "input_rank": input_rank}
            blocks.append(KroneckerBlock(plan.params, output, inputs, input_major=plan.input_major, **ranks))
        # the pass's own sums of outer products, exactly symmetric: taken as they are
        return KroneckerFactoredLinearOperator(list(tensors), blocks, copy=False)

    @property
    def factored(self) -> LinearOperator:
        """The factors' algebra (a :class:`~curvkit.structured.KroneckerFactoredLinearOperator`).

        Computed at first use (one pass over the data) and kept.
        """
        if self._factored is None:
            self._factored = self._computed()
        return self._factored

    @property
    def _held(self) -> LinearOperator:
        return self.factored

    def inverse(
        self,
        damping: float | tuple[float, float] = 0.0,
        use_heuristic_damping: bool = False,
        min_damping: float = 1e-8,
        use_exact_damping: bool = False,
        cache: bool = True,
        retry_double_precision: bool = True,
    ) -> KFACInverseLinearOperator:
        """The damped inverse (see :class:`~curvkit.KFACInverseLinearOperator`)."""
        from curvkit.operators.kfac_inverse import KFACInverseLinearOperator  # it imports this module

        return KFACInverseLinearOperator(
            self,
            damping,
            use_heuristic_damping,
            min_damping,
            use_exact_damping,
            cache,
            retry_double_precision,
        )

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Settings and factors (computed if not yet) as plain containers of tensors, for ``torch.save``.

        Unlike curvlinops', it holds no copy of the model's parameters: save the model yourself.
        """
        return {
            "format": self._STATE_FORMAT,
            "loss_type": type(self._setup.loss_func).__name__,
            "loss_reduction": self._reduction,
            "seed": self._seed,
            "fisher_type": self._fisher_type,
            "mc_samples": self._mc_samples,
            "kfac_approx": self._kfac_approx,
            "loss_average": self._loss_average,
            "separate_weight_and_bias": self._separate,
            "num_data": self._setup.engine.num_data,
            "factors": self.factored.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the factors of ``state_dict`` (of an operator with the same settings and parameters).

        Raises:
            ValueError: If it is not a KFAC state dict, or its loss or settings differ from this one's.
        """
        self._check_state(state_dict)
        factored = self._FACTORED.from_state_dict(state_dict["factors"], list(self._setup.model.tensors))
        self._factored = factored

    def _check_state(self, state_dict: Any) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("format") != self._STATE_FORMAT:
            raise ValueError(f"state_dict must be a {type(self).__name__}'s state_dict.")
        mine = {
            "loss_type": type(self._setup.loss_func).__name__,
            "loss_reduction": self._reduction,
            "fisher_type": self._fisher_type,
            "kfac_approx": self._kfac_approx,
            "separate_weight_and_bias": self._separate,
        }
        differ = {
            key: (state_dict.get(key), value) for key, value in mine.items() if state_dict.get(key) != value
        }
        if differ:
            raise ValueError(
                "state_dict is of another KFAC: "
                + ", ".join(
                    f"{key} {stored!r} (this operator: {value!r})" for key, (stored, value) in differ.items()
                )
                + "."
            )
        if state_dict["factors"].get("shapes") != [list(shape) for shape in self._setup.model.layout.shapes]:
            raise ValueError("state_dict is of parameters of other shapes than this operator's.")

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, Any],
        model_func: nn.Module,
        params: Sequence[Tensor] | Mapping[str, Tensor],
        data: Iterable,
        check_deterministic: bool = True,
        batch_size_fn: Callable | None = None,
    ) -> KFACLinearOperator:
        """An operator with the settings and factors of ``state_dict`` (curvlinops 3.x's signature).

        The loss is rebuilt from its stored type and reduction; no pass over the data computes
        factors (``check_deterministic`` probes the model and the data alone).
        """
        if not isinstance(state_dict, dict) or state_dict.get("format") != cls._STATE_FORMAT:
            raise ValueError(f"state_dict must be a {cls.__name__}'s state_dict.")
        losses = {loss.__name__: loss for loss in SUPPORTED_LOSSES}
        loss_func = losses[state_dict["loss_type"]](reduction=state_dict["loss_reduction"])
        operator = cls(
            model_func,
            loss_func,
            params,
            data,
            check_deterministic=False,
            seed=state_dict["seed"],
            fisher_type=state_dict["fisher_type"],
            mc_samples=state_dict["mc_samples"],
            kfac_approx=state_dict["kfac_approx"],
            loss_average=state_dict["loss_average"],
            separate_weight_and_bias=state_dict["separate_weight_and_bias"],
            num_data=state_dict["num_data"],
            batch_size_fn=batch_size_fn,
        )
        operator.load_state_dict(state_dict)
        if check_deterministic:  # no factor pass to compare with: the model and the data alone
            operator._setup.check_deterministic()
        return operator


def _check_positions(
    loss_func: nn.Module,
    loss_average: str | None,
    num_per_example_loss_terms: int | None,
    output_shape: Sequence[int],
) -> None:
    """Check ``loss_average='batch'`` and ``num_per_example_loss_terms`` against an output shape."""
    positions = positions_per_example(loss_func, output_shape)
    if loss_average == "batch" and positions != 1:
        raise ValueError(
            "loss_average='batch' means one loss term per example, but the model output has "
            f"{positions} positions per example, over which loss_func averages too: pass "
            "loss_average='batch+sequence'."
        )
    if num_per_example_loss_terms is not None and num_per_example_loss_terms != positions:
        raise ValueError(
            f"num_per_example_loss_terms is {num_per_example_loss_terms}, but the model output has "
            f"{positions} positions per example (pass None to count them)."
        )
