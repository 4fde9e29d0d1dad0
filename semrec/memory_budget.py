"""Config values that size an allocation, checked against this machine's memory at load time.

A value such as ``codebook_size: 1e12`` or ``eval.num_beams: 1e9`` would otherwise reach
torch's allocator minutes into a run and fail there with a message that names no key. Each
estimate here is a lower bound of what the value makes semrec allocate (the real run needs
more: activations, the backbone, the data), so a refusal is always right and a run that
passes may still be too large; the machine's physical memory is the bound.
"""

from __future__ import annotations

from semrec.machine import physical_memory_bytes

FP32_BYTES = 4
# A trained fp32 value: the weight, its gradient and Adam's two moments.
TRAINED_FP32_BYTES = 4 * FP32_BYTES


class AllocationTooLarge(ValueError):
    """A config value would make semrec allocate more than this machine's memory."""


def require_fits(
    key: str, value: object, needed: int, what: str, memory: int | None = None
) -> None:
    """Raise :class:`AllocationTooLarge` naming ``key`` when ``needed`` bytes exceed ``memory``
    (default: :func:`~semrec.machine.physical_memory_bytes`; an unknown size refuses
    nothing)."""
    memory = physical_memory_bytes() if memory is None else memory
    if memory and needed > memory:
        raise AllocationTooLarge(
            f"{key}: {value!r} makes {what} need at least {readable_bytes(needed)}, more than "
            f"this machine's {readable_bytes(memory)} of memory"
        )


def readable_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
