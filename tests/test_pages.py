"""Fresh CPU blocks on transparent huge pages (``curvkit._pages``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fresh_process import measured

from curvkit import _pages
from curvkit._pages import empty_block

_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_SMAPS = Path("/proc/self/smaps")  # read by SCRIPT


def _thp_mode() -> str | None:
    """The bracketed THP mode (``always``, ``madvise``, ``never``), or ``None`` off Linux."""
    if not _THP_MODE.exists() or not _SMAPS.exists():
        return None
    return _THP_MODE.read_text().split("[")[1].split("]")[0]


SCRIPT = """
import json, torch
from pathlib import Path
from curvkit._pages import empty_block


def huge_share(block):
    # bytes on huge pages in the mappings that overlap the block (marking a range splits its
    # mapping: the partial pages at the ends are mappings of their own), over the block's bytes
    start, stop = block.data_ptr(), block.data_ptr() + block.numel() * block.element_size()
    total, overlaps = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and ":" not in first:  # a mapping's header: "start-end perms ..."
            low, high = (int(bound, 16) for bound in first.split("-"))
            overlaps = low < stop and start < high
        elif overlaps and first == "AnonHugePages:":
            total += 1024 * int(line.split()[1])
    return total / (stop - start)


shape, cpu = (16, 2**20), torch.device("cpu")
marked = empty_block(shape, torch.float32, cpu).fill_(1.0)
plain = torch.empty(shape, dtype=torch.float32).fill_(1.0)
print(json.dumps({"marked": huge_share(marked), "plain": huge_share(plain)}))
"""


@pytest.mark.skipif(_thp_mode() != "madvise", reason="needs Linux with transparent huge pages on madvise")
def test_a_large_block_is_on_huge_pages_where_torch_empty_is_not():
    """In a fresh process (where a 64 MiB block is a fresh mapping, not memory the C allocator
    holds already), the marked block's pages are huge but for the partial ends; the same
    allocation by ``torch.empty`` is not (unless torch itself marks it: ``THP_MEM_ALLOC_ENABLE``)."""
    shares = measured(SCRIPT)
    assert shares["marked"] > 0.9, shares
    if os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        assert shares["plain"] < 0.5, shares


def test_small_blocks_and_other_devices_are_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(_pages, "_madvise", lambda: lambda *args: calls.append(args) or 0)
    small = empty_block((3, 5), torch.float64, torch.device("cpu"))
    assert small.shape == (3, 5) and small.dtype == torch.float64 and not calls
    large = empty_block((2, _pages.ADVISED_BYTES // 4), torch.float32, torch.device("cpu"))
    assert large.shape == (2, _pages.ADVISED_BYTES // 4) and len(calls) == 1
    start, length, _ = calls[0]
    assert start % _pages.HUGE_PAGE == 0 and length % _pages.HUGE_PAGE == 0
    assert large.data_ptr() <= start and start + length <= large.data_ptr() + 2 * _pages.ADVISED_BYTES


def test_a_refused_mark_still_gives_the_block(monkeypatch):
    monkeypatch.setattr(_pages, "_madvise", lambda: lambda *args: -1)
    block = empty_block((_pages.ADVISED_BYTES // 8,), torch.float64, torch.device("cpu"))
    block.fill_(2.0)
    assert float(block.sum()) == 2.0 * block.numel()
