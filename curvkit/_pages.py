"""Fresh CPU blocks of long vectors on transparent huge pages, where the kernel offers them.

A product with a ResNet-sized operator writes blocks of ``k`` vectors of length ``D ≈ 10⁷``
(715 MB for ``k = 16``) into memory the C allocator maps anew, and frees them a few steps later:
the kernel then zeroes and maps a 4 KiB page per fault on the first touch, and unmaps each again
when the block is freed. On 2 MiB pages both cost a fraction of that (measurements in
``docs/design-notes.md``, "Fresh pages").
Linux backs an anonymous mapping with huge pages on the first touch where it was marked with
``madvise(MADV_HUGEPAGE)`` (THP mode ``madvise``, the common default) or always (mode
``always``). torch marks its CPU allocations only under the environment variable
``THP_MEM_ALLOC_ENABLE=1``, which it reads once at start-up; :func:`empty_block` marks the blocks
curvkit allocates itself. Elsewhere (another system, THP off, a GPU) it is ``torch.empty``.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

HUGE_PAGE = 2**21
"""Bytes of a transparent huge page on x86-64 and of the usual arm64 configuration."""

ADVISED_BYTES = 2**25
"""Blocks from 32 MiB on are marked: below, the C allocator serves most of them from memory it
holds already, and the partial huge pages at the ends would be a larger share."""

_MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    """Libc's ``madvise``, or ``None`` off Linux (or where it cannot be loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def empty_block(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty(shape)``, its whole huge pages marked for transparent huge pages on the CPU.

    The mark must precede the first touch, so the block is returned untouched (its entries are
    whatever the memory holds, as with ``torch.empty``). A refused mark is ignored: the block is
    then on the pages the kernel chooses, as without it.
    """
    block = torch.empty(tuple(shape), dtype=dtype, device=device)
    num_bytes = block.numel() * block.element_size()
    madvise = _madvise() if block.device.type == "cpu" and num_bytes >= ADVISED_BYTES else None
    if madvise is not None:
        start = -(-block.data_ptr() // HUGE_PAGE) * HUGE_PAGE  # the whole huge pages inside it
        stop = (block.data_ptr() + num_bytes) // HUGE_PAGE * HUGE_PAGE
        if stop > start:
            madvise(start, stop - start, _MADV_HUGEPAGE)
    return block
