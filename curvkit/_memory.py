"""The peak memory a computation adds, measured: what a memory budget chooses column blocks from.

On CUDA devices, the caching allocator's peak of allocated bytes (its peak statistic is reset
for the measurement). On the CPU, the high-water mark of the process's resident set on Linux
(``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs``), which counts the pages a
computation touches beyond those resident before (the C allocator's free memory is returned
to the system first, so that its reuse is counted). Where
neither is available (other systems), nothing is measured.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from types import TracebackType

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _resident_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} missing from {_STATUS}")


def _release_free_heap() -> None:
    """Return the C allocator's free memory to the system (glibc's ``malloc_trim``), where it can.

    Memory freed earlier but kept by the allocator would be reused without growing the resident
    set, and the measured computation would seem to need none.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measurable(device: torch.device) -> bool:
    """Whether :class:`PeakMemory` can measure on ``device``."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        _CLEAR_REFS.write_text("5")
        _resident_kib("VmHWM")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: ``bytes``, the most memory its body used beyond what was in use at its start.

    Args:
        device: Where the computation allocates (see :func:`measurable`).

    Note:
        Resets the device's peak statistic (``torch.cuda.reset_peak_memory_stats``) or the
        process's ``VmHWM``, so a peak the caller measures around it starts over.
    """

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            _CLEAR_REFS.write_text("5")
            self._start = 1024 * _resident_kib("VmRSS")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = 1024 * _resident_kib("VmHWM")
        self.bytes = max(peak - self._start, 0)
