"""Kernels with every derivative that curvature products take, selected per model.

PyTorch computes some functions with fused kernels that lack derivatives curvature products
need (forward mode, second derivatives, batching under ``vmap``) or get them wrong.
:func:`differentiable_kernels` swaps them, for the duration of a call, for kernels that compute
the same function with exact derivatives; everything is restored afterwards. Every evaluation
of a model by an operator (and by :mod:`curvkit.reference`) runs inside it, so all of them
compute the same function. See docs/design-notes.md, "Kernels with every derivative".
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

# where weight normalization looks up its kernel: torch itself (parametrizations) and the module
# of the older, deprecated hook-based version, which imported the name (if torch still has it)
try:
    _HOOK_MODULE = importlib.import_module("torch.nn.utils.weight_norm")
except ImportError:  # pragma: no cover - removed in some future torch
    _HOOK_MODULE = None
_WEIGHT_NORM_HOMES = [torch] if _HOOK_MODULE is None else [torch, _HOOK_MODULE]
_WEIGHT_NORM_TYPES = tuple(
    cls
    for cls in (
        getattr(torch.nn.utils.parametrizations, "_WeightNorm", None),
        getattr(_HOOK_MODULE, "WeightNorm", None),
    )
    if cls is not None
)


@cache
def _load_forward_mode_decompositions() -> None:
    """Load torch's forward-mode decompositions now, without its ``torch.jit.script`` deprecation.

    torch loads them on the first ``make_dual`` of a process (``torch.func.jvp`` included), and
    compiles them with ``torch.jit.script``, which warns that it is deprecated (a
    ``DeprecationWarning`` in torch 2.13, a ``FutureWarning`` from 2.14 on). That warning is about
    torch's own code: it is silenced here, for this one load. Every forward-mode product of
    curvkit runs inside :func:`differentiable_kernels`, which calls this first (once).
    """
    # private; torch 2.3 has no such function, and its torch.jit.script does not warn
    load = getattr(forward_ad, "_maybe_load_decompositions", None)
    if load is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is ")
            load()


def _composite_weight_norm(v: Tensor, g: Tensor, dim: int = 0) -> Tensor:
    """``torch._weight_norm`` from differentiable primitives: ``v g / ‖v‖`` (norm over all but ``dim``)."""
    return v * (g / torch.norm_except_dim(v, 2, dim))


def _normalizes_weights(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a weight-norm parametrization or carries the older weight-norm hook."""
    return isinstance(module, _WEIGHT_NORM_TYPES) or any(
        isinstance(hook, _WEIGHT_NORM_TYPES) for hook in module._forward_pre_hooks.values()
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

    It also loads torch's forward-mode decompositions once, without the ``torch.jit.script``
    deprecation warning that their first use shows (:func:`_load_forward_mode_decompositions`).
    """
    _load_forward_mode_decompositions()
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
