"""The exact diagonal of the GGN (or of its Monte-Carlo Fisher approximation)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp, vmap
from torch.utils._pytree import tree_leaves, tree_map

from curvkit._boundary import as_integer
from curvkit._engine import Batch
from curvkit._layers.chain import LayerChain
from curvkit._layers.diagonal import chain_squared_gradient_sums, squared_gradient_sums, worth_it_beside_vjps
from curvkit._layers.recording import output_gradients, recording, traced_forward
from curvkit._model.autograd import paths_agree
from curvkit._model.kernels import differentiable_kernels
from curvkit._output_factor import output_factor
from curvkit._predictive import batch_generator
from curvkit.losses import check_supported, reduction_of
from curvkit.operators._setup import ModelDataSetup
from curvkit.structured import DiagonalLinearOperator


def ggn_diagonal(
    model_func: torch.nn.Module,
    loss_func: Callable,
    params: Sequence[Tensor] | Mapping[str, Tensor],
    data: Iterable,
    *,
    mode: str = "exact",
    mc_samples: int = 1,
    seed: int = 2147483647,
    progressbar: bool = False,
    check_deterministic: bool = True,
    num_data: int | None = None,
    batch_size_fn: Callable | None = None,
    process_group: object | None = None,
) -> Tensor:
    r"""The diagonal of the GGN, ``diag(Σ_b w_b J_bᵀ Λ_b J_b)``, without forming the matrix.

    With a factorization ``Λ_n = S_n S_nᵀ`` of each sample's output-space curvature,

    .. math::
        \mathrm{diag}(\mathbf{G}) = \sum_n \sum_k (\mathbf{J}_n^\top \mathbf{s}_{n,k})^{\odot 2},

    with ``K`` columns ``s_{n,k}``: the number of output entries per sample for ``mode='exact'``
    (closed-form square roots of the loss Hessian) and ``K = mc_samples`` for ``mode='mc'``,
    whose columns are sampled gradients and whose diagonal is that of
    :class:`~curvkit.FisherMCLinearOperator` with the same seed. Used for diagonal Laplace
    approximations and pruning saliencies.

    Parameters of ``nn.Linear`` (any leading dimensions), ``nn.Conv1d/2d/3d`` and ``nn.Embedding``
    layers whose rows belong to one sample each (:mod:`curvkit._layers.recording`; a layer used
    several times and tied weights included) take their layer rule: the ``K`` columns pulled back
    to the layer outputs in one backward pass, then per-sample gradients
    ``Σ_r g_{n,r} ψ(a_n)_rᵀ`` as one product per sample, squared and summed in chunks, or none at
    all for a linear layer on ``[N, in]`` (``(Σ_k G_k²)ᵀ A²``). An ``nn.Sequential`` chain of
    such layers and elementwise activations or pooling pushes the columns back by hand
    (:mod:`curvkit._layers.chain`); ``benchmarks/ggn_diagonal.py`` compares it with BackPACK.
    Other parameters take one
    per-sample vector-Jacobian product per column under ``vmap``; models that ``vmap`` cannot
    push single samples through (recurrent layers) run one sample at a time, with its ``K``
    products batched.

    Args:
        model_func: The network (an ``nn.Module``; samples are pushed through it one at a
            time under ``vmap``, so it must not couple samples).
        loss_func: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (with class weights
            or ``pos_weight`` for ``mode='exact'`` only).
        params: Parameters (list or dict of named tensors).
        data: Iterable of ``(X, y)`` mini-batches.
        mode: ``'exact'`` or ``'mc'``.
        mc_samples: Samples per data point for ``mode='mc'``.
        seed: Seed of the target sampling for ``mode='mc'``.
        progressbar: Show a progress bar.
        check_deterministic: Run the determinism probe's checks of model and data (random
            layers in train mode, two passes over the data that must agree, the second being
            the diagonal's own), as the operators do. Default: ``True``.
        num_data: Number of samples (computed if ``None``).
        batch_size_fn: Batch size of a dict input.
        process_group: ``None`` (default: this process only), or a ``torch.distributed`` process
            group: then ``data`` is this rank's shard and the diagonal is summed over the ranks,
            each getting the full-data diagonal (docs/distributed.md).

    Returns:
        The diagonal, shape ``[D]``.

    Raises:
        ValueError: For an unknown ``mode``, a model that is not an ``nn.Module``, bad
            ``mc_samples`` or ``seed``.
        NotImplementedError: For unsupported losses.
        RuntimeError: If the model fails on single samples (``torch.func`` refuses a train-mode
            BatchNorm's in-place update, say), or the determinism probe fails.
    """
    if mode not in ("exact", "mc"):
        raise ValueError(f"mode must be 'exact' or 'mc', got {mode!r}.")
    if not isinstance(model_func, torch.nn.Module):
        raise ValueError("model_func must be an nn.Module for the GGN diagonal (per-sample vmap).")
    mc_samples, seed = as_integer(mc_samples, "mc_samples", 1), as_integer(seed, "seed")
    # the GGN of a class-weighted loss is defined (weights scale Λ); its Fisher is not
    check_supported(
        loss_func, "the GGN diagonal" if mode == "exact" else "the MC-Fisher diagonal", mode == "exact"
    )
    setup = ModelDataSetup(
        model_func,
        loss_func,
        params,
        data,
        progressbar=progressbar,
        num_data=num_data,
        batch_size_fn=batch_size_fn,
        process_group=process_group,
        signature=f"ggn_diagonal, mode {mode}, mc_samples {mc_samples}, seed {seed}",
    )
    with setup.reduction.failures_shared("ggn_diagonal"):
        return _ggn_diagonal(setup, loss_func, mode, mc_samples, seed, check_deterministic)


def _ggn_diagonal(
    setup: ModelDataSetup,
    loss_func: Callable,
    mode: str,
    mc_samples: int,
    seed: int,
    check_deterministic: bool,
) -> Tensor:
    """:func:`ggn_diagonal` on a built setup (on every rank of its process group)."""
    model, model_func = setup.model, setup.model.model_func
    # model and data (there is no product to compare); the second pass is the diagonal's own
    probe = setup.shared_pass_probe() if check_deterministic else None
    fisher_type = "type-2" if mode == "exact" else "mc"
    # the first batch is traced to tell which layers are per sample; later ones record those only
    layers, traced = setup.layer_map.layers, [True]

    chain = LayerChain.of(model_func, setup.layer_map, len(model.tensors))

    def batch_diagonal(batch: Batch) -> Tensor:
        nonlocal layers
        generator = batch_generator(seed, batch.global_index, model.device)
        linearization = None if chain is None else chain.linearize(batch, loss_func, gradients=False)
        if linearization is not None:  # a chain of linear layers: the columns go back by hand
            if probe is not None:
                probe.record(batch, setup.batch_tensors(batch, linearization.output))
            columns = output_factor(
                fisher_type, loss_func, linearization.output, batch, generator, mc_samples
            )
            squares = chain_squared_gradient_sums(linearization, columns)
            return torch.cat([squares[index].flatten() for index in range(len(model.tensors))])
        squares: dict[int, Tensor] = {}
        with recording(layers):  # per-sample layers: their rules, no per-sample vjps
            output, per_sample = traced_forward(model, model_func, batch.X, batch.size, layers, traced[0])
            if probe is not None:
                probe.record(batch, setup.batch_tensors(batch, output.detach()))
            columns = output_factor(fisher_type, loss_func, output.detach(), batch, generator, mc_samples)
            per_sample = worth_it_beside_vjps(per_sample, len(model.tensors))
            if per_sample:
                squares = squared_gradient_sums(per_sample, output_gradients(per_sample, output, columns))
            if traced[0]:
                layers, traced[0] = per_sample, False
        del output  # its graph: not needed by the per-sample path below
        rest = [index for index in range(len(model.tensors)) if index not in squares]
        if rest:
            squares.update(zip(rest, _sum_of_squared_sample_vjps(model, batch.X, columns, rest)))
        # detached: the per-sample path may leave a graph on its result
        return torch.cat([squares[index].flatten() for index in range(len(model.tensors))]).detach()

    # into a given zero vector: a shard without loss terms then adds zeros in data-parallel runs
    diagonal = model.tensors[0].new_zeros(model.layout.dim)
    setup.engine.sum_over_batches(
        batch_diagonal, reduction_of(loss_func), desc="GGN diagonal", out=[diagonal]
    )
    if probe is not None:
        probe.finish()
    return diagonal


def _sum_of_squared_sample_vjps(model, X, columns: Tensor, indices: list[int]) -> list[Tensor]:
    """``Σ_n Σ_k (J_nᵀ s_{n,k})²`` for the parameters ``indices``; ``columns`` is ``[K, N, ...]``.

    Per-sample vector-Jacobian products under ``vmap``, for parameters outside the factored
    linear layers (:mod:`curvkit._layers.recording`): over the samples, and within each over its ``K``
    columns. Such nested vmaps have met wrong batching rules (PReLU's backward on
    convolution features gave errors of several per cent in torch 2.13, without failing), so their
    result is checked: a random mix ``Σ_k r_k`` of the per-sample products, summed over the
    samples, must equal one backward pass of the batch with the mixed columns. Where the check
    fails, or ``vmap`` cannot push single samples through the model (recurrent layers, whose
    kernels write into preallocated states), the samples go one at a time, each with its ``K``
    products batched.

    Raises:
        ValueError: If the output's first axis is not the input's (flattened sequence outputs).
        RuntimeError: If the model fails on single samples.
    """
    num_samples = {leaf.shape[0] for leaf in tree_leaves(X) if isinstance(leaf, Tensor) and leaf.ndim > 0}
    if num_samples != {columns.shape[1]}:
        raise ValueError(
            "ggn_diagonal takes per-sample gradients of the parameters outside nn.Linear layers, a "
            "sample being a slice of the first axis of X and of the model output; but X holds "
            f"{sorted(num_samples)} and the output {columns.shape[1]} along it. For sequence targets, keep "
            "the sequence axis (output [N, C, T], y [N, T]) instead of flattening them "
            "(docs/sequence-targets.md)."
        )
    primals = [model.tensors[index].detach() for index in indices]
    generator = torch.Generator(device=columns.device).manual_seed(0)
    mix = torch.randn(columns.shape[0], generator=generator, dtype=columns.dtype, device=columns.device)

    def sample_vjps(x_alone: Any, sample_columns: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``Σ_k (J_nᵀ s_{n,k})²`` and ``Σ_k r_k J_nᵀ s_{n,k}`` for one sample (batch axis of one)."""
        forward = model.functional(x_alone, indices)
        _, pullback = vjp(lambda *values: forward(*values)[0], *primals)
        gradients = vmap(pullback)(sample_columns)
        return [g.square().sum(0) for g in gradients], [torch.tensordot(mix, g, dims=1) for g in gradients]

    with differentiable_kernels(model.model_func):
        try:
            squares, mixed = vmap(lambda x, c: sample_vjps(tree_map(lambda t: t.unsqueeze(0), x), c))(
                X, columns.movedim(1, 0)
            )
            _, pullback = vjp(model.functional(X, indices), *primals)
            expected = pullback(torch.tensordot(mix, columns, dims=1))
            if all(paths_agree(m.detach().sum(0), e.detach()) for m, e in zip(mixed, expected)):
                return [square.sum(0) for square in squares]
        except RuntimeError:
            pass
        try:
            per_sample = (sample_vjps(_sample(X, n), columns[:, n])[0] for n in range(columns.shape[1]))
            return [sum(squares) for squares in zip(*per_sample)]
        except RuntimeError as error:
            raise RuntimeError(
                "ggn_diagonal needs per-sample gradients of the parameters outside nn.Linear layers, "
                f"but model_func fails on single samples ({error}). Estimate the diagonal of "
                "GGNLinearOperator with hutchinson_diag or xdiag instead."
            ) from error


def _sample(X: Any, index: int) -> Any:
    """Sample ``index`` of a batch input (tensor or dict of tensors), keeping a batch axis of one."""
    return tree_map(lambda tensor: tensor[index : index + 1], X)


class GGNDiagonalLinearOperator(DiagonalLinearOperator):
    """The GGN's diagonal as a diagonal linear operator (see :func:`ggn_diagonal` for the arguments).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model, loss_func = nn.Linear(3, 2), nn.CrossEntropyLoss()
        >>> data = [(torch.rand(5, 3), torch.tensor([0, 1, 1, 0, 1]))]
        >>> params = list(model.parameters())
        >>> diagonal = GGNDiagonalLinearOperator(model, loss_func, params, data)
        >>> from curvkit import GGNLinearOperator
        >>> dense = GGNLinearOperator(model, loss_func, params, data).to_dense()
        >>> torch.allclose(diagonal.diagonal, dense.diagonal(), atol=1e-6)
        True
    """

    def __init__(self, model_func, loss_func, params, data, **kwargs):
        super().__init__(ggn_diagonal(model_func, loss_func, params, data, **kwargs))
