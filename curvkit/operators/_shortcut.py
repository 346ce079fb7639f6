"""Faster ways to a product that hold for some models only, checked against the general path.

A shortcut (layer factors for ``Jᵀ Λ J``, the hand-written Hessian of a layer chain) rests on
assumptions about the model that its structure suggests but cannot prove: that samples are not
coupled (BatchNorm in train mode couples them), that a module does what its type says. So its
first product is compared with the general path's, and again whenever a module switched
between train and eval mode since; where they disagree, the operator keeps the general path.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from curvkit._model.autograd import paths_agree


class AgreementCheck:
    """Whether a shortcut agreed with the general path in the model's current train/eval modes.

    Args:
        model_func: The model (its modules' ``training`` flags are compared; a plain callable has
            none, so it is checked once).

    Attributes:
        failed: The shortcut disagreed once; it is not to be used again.
        verified_modes: The modes in which it agreed, or ``None`` before the first check.
    """

    def __init__(self, model_func: Callable):
        self.model_func = model_func
        self.failed = False
        self.verified_modes: tuple[bool, ...] | None = None

    def checked(self, result: list[Tensor], general: Callable[[], list[Tensor]]) -> list[Tensor]:
        """``result``, or ``general()`` if a check is due and they disagree (then :attr:`failed`)."""
        modes = (
            tuple(module.training for module in self.model_func.modules())
            if isinstance(self.model_func, nn.Module)
            else ()
        )
        if self.verified_modes == modes:
            return result
        expected = general()
        if not all(paths_agree(r, e) for r, e in zip(result, expected)):
            self.failed = True
            return expected
        self.verified_modes = modes
        return result
