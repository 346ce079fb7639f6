"""The mini-batch engine: one place that iterates, weights and checks the data."""

from curvkit._engine.batches import MiniBatchEngine
from curvkit._engine.determinism import check_deterministic
from curvkit._engine.iteration import Batch

__all__ = ["Batch", "MiniBatchEngine", "check_deterministic"]
