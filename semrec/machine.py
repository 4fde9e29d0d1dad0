"""The machine semrec runs on: its CPU (benchmarks name it; results depend on it) and its
physical memory (the bound config values that size allocations are checked against)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_amx_bf16() -> bool | None:
    """Whether the CPU advertises AMX-BF16 (None: unknown, no /proc/cpuinfo)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def physical_memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0
