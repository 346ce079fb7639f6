"""The per-batch cache of an operator (``cache_batches=True``): results kept between products.

A cached linearization holds the graph of a forward pass at the parameters of that moment, so
the cache must follow the model: once per pass it compares what the products read (every
parameter and buffer of the module, not only ``params``) with what it was filled at, and empties
itself on any change (docs/design-notes.md, "What the batch cache watches").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from curvkit._engine import Batch
from curvkit._model.differentiation import ModelFunction


def _same_state(first: tuple[tuple, Tensor], second: tuple[tuple, Tensor]) -> bool:
    """Equal identities and bit-for-bit equal sums (a NaN sum equals itself)."""
    return first[0] == second[0] and torch.equal(first[1].view(torch.int64), second[1].view(torch.int64))


class BatchCache:
    """``compute()`` per batch and key, remembered while the model stays as it was.

    Args:
        model: The operator's model function (its parameters, and the module's).
        enabled: ``cache_batches``; without it every call computes.

    Attributes:
        entries: ``{(batch index, key): result}``.
    """

    def __init__(self, model: ModelFunction, enabled: bool):
        self.model, self.enabled = model, enabled
        self.entries: dict[tuple[int, Hashable], Any] = {}
        self._state: tuple[tuple, Tensor] | None = None

    def get(self, batch: Batch, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered for the batch when the cache is enabled."""
        if not self.enabled:
            return compute()
        if (batch.index, key) not in self.entries:
            self.entries[batch.index, key] = compute()
        return self.entries[batch.index, key]

    def follow_model(self) -> None:
        """Empty the cache if the model changed since it was filled (once per pass).

        Changes seen: an optimizer step, ``vector_to_parameters``, an update through ``.data``,
        of ``params`` or of any other parameter or buffer of the module, a train/eval switch.
        """
        if not self.enabled:
            return
        state = self._model_state()
        if self._state is None or not _same_state(state, self._state):
            self.entries.clear()
            self._state = state

    def _model_state(self) -> tuple[tuple, Tensor]:
        """Storage, version counter and sum of every parameter and buffer the products read.

        Version counters see in-place updates, storage addresses see reassignment
        (``p.data = ...``), and the sums see in-place updates through ``.data``, which bypass the
        version counter; the modules' ``training`` flags see ``train()`` / ``eval()``. Reading
        every parameter once per product costs little beside the product.
        """
        model = self.model.model_func
        tensors = list(self.model.tensors)
        if isinstance(model, torch.nn.Module):
            tensors += [*model.parameters(), *model.buffers()]
        identity = tuple((t.data_ptr(), t._version, t.shape, t.dtype) for t in tensors)
        if isinstance(model, torch.nn.Module):  # train / eval mode changes the function
            identity += tuple(module.training for module in model.modules())
        sums = torch.stack([t.detach().sum(dtype=torch.float64) for t in tensors if t.is_floating_point()])
        return identity, sums
