"""The settings of one report, checked: what ``curvkit report``'s options become."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

DEFAULT_BUDGET = 3000
"""Products with curvature operators that the estimating analyses share, without ``--quick``."""
QUICK_BUDGET = 1000
"""The same with ``--quick``."""
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ReportInputError(ValueError):
    """Bad input to the report: the message names the option and what it expects (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """What to analyse and how; every field is recorded in ``metrics.json``.

    Attributes:
        model: ``'mlp'`` or ``'cnn'`` (built in, trained on scikit-learn's digits), or the user's
            ``package.module:function`` / ``path/to/file.py:function``.
        out: Directory the report is written to (created if missing).
        device: Device to analyse on; ``None``: the model's (the CPU for the built-in ones).
        dtype: ``'float32'`` or ``'float64'``; ``None``: the model's.
        seed: Seed of training and of every random estimate.
        params: Regular expression (``re.search``) selecting parameters by name; ``None``: all
            trainable ones.
        top_k: Number of top eigenvalues.
        budget: Products with curvature operators the estimating analyses share; ``None``: the
            default (:data:`DEFAULT_BUDGET`, or :data:`QUICK_BUDGET` with ``quick``).
        quick: Shorter training, a data subset for the built-in models, a smaller budget.
        dense: Form dense matrices for models up to :data:`curvkit.report.analyses.dense.MAX_DENSE_DIM`
            parameters.
    """

    model: str = "mlp"
    out: Path = Path("curvkit-report")
    device: str | None = None
    dtype: str | None = None
    seed: int = 0
    params: str | None = None
    top_k: int = 8
    budget: int | None = None
    quick: bool = False
    dense: bool = True

    @property
    def product_budget(self) -> int:
        """The budget in products, its default filled in."""
        if self.budget is not None:
            return self.budget
        return QUICK_BUDGET if self.quick else DEFAULT_BUDGET

    @property
    def builtin(self) -> bool:
        """Whether the model is one of the built-in ones."""
        return self.model in ("mlp", "cnn")

    def checked(self) -> ReportSettings:
        """Return the settings, with ``out`` as a :class:`~pathlib.Path`, if each is valid.

        Raises:
            ReportInputError: Naming the first invalid option and what it expects.
        """
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ReportInputError(
                f"--out {str(out)!r} is a file; expected a directory (created if missing)."
            )
        if not self.builtin and ":" not in self.model:
            raise ReportInputError(
                f"--model {self.model!r}: expected 'mlp', 'cnn', 'package.module:function' or "
                "'path/to/file.py:function'."
            )
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ReportInputError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}.")
        if self.device is not None:
            _check_device(self.device)
        if self.params is not None:
            try:
                re.compile(self.params)
            except re.error as error:
                raise ReportInputError(
                    f"--params {self.params!r} is not a regular expression: {error}."
                ) from None
        for name, value in (("--top-k", self.top_k), ("--budget", self.budget)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ReportInputError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ReportInputError(f"--seed must be a non-negative integer, got {self.seed!r}.")
        return dataclasses.replace(self, out=out)

    def as_dict(self) -> dict:
        """The settings as JSON values, defaults filled in."""
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        values["budget"] = self.product_budget
        return values


def _check_device(device: str) -> None:
    """Raise :class:`ReportInputError` unless ``device`` names a torch device that is present."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ReportInputError(
            f"--device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')."
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ReportInputError(f"--device {device!r}: CUDA is not available here.")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ReportInputError(f"--device {device!r}: there are {torch.cuda.device_count()} CUDA devices.")
