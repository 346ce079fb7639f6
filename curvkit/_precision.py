"""Half precision (float16, bfloat16): what runs in float32 instead.

A half-precision operator multiplies in its precision, but sums over the data and factorizations
do not. A sum added term by term in 8 (bfloat16) or 11 (float16) bits drifts with the number of
terms and stops growing once a term falls below half its last bit (in bfloat16, 600 ones add
up to 256), and PyTorch has no half-precision Cholesky factorization. So sums over batches
(:class:`curvkit._engine.MiniBatchEngine`), KFAC's factor pass and the factors' Cholesky
factorizations run in float32, each rounded to the operator's precision once, at the end
(design notes, "Half precision").
"""

from __future__ import annotations

import torch

HALF_PRECISIONS = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and factorizations of ``dtype`` tensors run in: float32 for half precision."""
    return torch.float32 if dtype in HALF_PRECISIONS else dtype
