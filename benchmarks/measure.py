"""Measuring helpers shared by the benchmark scripts: allocator settings, timing, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

# glibc settings of timing processes (products.py's workers of both libraries, column_blocks.py):
# freed memory stays in the heap instead of going back to the OS, so that a call does not pay page
# faults for memory that the previous call released. See benchmarks/README.md, "Allocator".
STEADY_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    function: Callable[[], object],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median time of ``repeats`` calls after ``warmup`` calls, synchronizing a GPU around each."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        function()
        synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def _release_free_heap() -> None:
    """Return glibc's free heap memory to the system (``malloc_trim``), where there is glibc.

    Peaks are read from the resident set size: memory that an earlier product freed but the
    heap kept (with trimming off, as for the timings) would be reused without growing it, and
    the next product would seem to need none.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryProbe:
    """Extra peak memory of a call, and memory that stays after it (bytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.available = device.type == "cuda" or self._can_reset_rss_peak()

    @staticmethod
    def _can_reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return "VmHWM" in Path("/proc/self/status").read_text()
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int:
        match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(match.group(1)) * 1024

    def current(self) -> int:
        gc.collect()
        _release_free_heap()
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return self._status("VmRSS")

    def peak_during(self, function: Callable[[], object]) -> int:
        """Peak memory during ``function()`` above the memory in use before it."""
        before = self.current()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        result = function()
        synchronize(self.device)
        peak = (
            torch.cuda.max_memory_allocated(self.device)
            if self.device.type == "cuda"
            else self._status("VmHWM")
        )
        del result
        return peak - before


def allocated_peak_during(function: Callable[[], object]) -> tuple[int, int] | None:
    """Peak bytes of tensors allocated during ``function()``, and those still allocated after it.

    Both above the tensors alive before the call, counted from the profiler's allocation events:
    on a CPU the quantity a GPU's allocator reports (``max_memory_allocated``), which the resident
    set does not show exactly (pages of an allocation count only once written; freed memory that
    the heap keeps is reused without growing it). ``None`` where the profiler gives no events.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        result = function()
    try:
        events = sorted(
            (event.start_ns(), event.nbytes())
            for event in profile.profiler.kineto_results.events()
            if event.name() == "[memory]"
        )
    except AttributeError:  # a torch without these event fields
        return None
    allocated = peak = 0
    for _, change in events:
        allocated += change
        peak = max(peak, allocated)
    del result
    return (peak, allocated) if events else None


def memory_counts(
    probe: MemoryProbe, functions: dict[str, Callable[[], object]], reset: Callable[[], None]
) -> dict[str, dict[str, list[int] | None]]:
    """Extra peak and kept bytes of each call, ``{name: {"resident": [peak, kept], "allocated": …}}``.

    Each call starts after ``reset()`` (a gradient's peak must include the gradient it makes)
    and what it returns is kept until its kept memory is read. All resident counts come first:
    the profiler's buffers stay resident after it. On a GPU the probe's count is the allocated
    one; ``"allocated"`` is ``None`` where the profiler gives no events.
    """
    counts: dict[str, dict[str, list[int] | None]] = {name: {} for name in functions}
    kept: list[object] = []
    for name, function in functions.items():
        reset()
        before = probe.current()
        peak = probe.peak_during(lambda function=function: kept.append(function()))
        counts[name]["resident"] = [peak, probe.current() - before]
        kept.clear()
    for name, function in functions.items():
        reset()
        allocated = (
            counts[name]["resident"] if probe.device.type == "cuda" else allocated_peak_during(function)
        )
        counts[name]["allocated"] = None if allocated is None else list(allocated)
    return counts


def publish(lines: list[str], output: str | None) -> None:
    """Print a benchmark's result table, and write it to ``output`` if given (``--output``)."""
    text = "\n".join(lines)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
