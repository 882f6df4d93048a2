"""How much memory this process can still allocate: what decides between holding data whole and reading it
by parts (the linear probe's closed-form fit, the training set's preprocessed tensor)."""
from __future__ import annotations

import os

__all__ = ["available_memory", "fits_in_memory_share"]


def available_memory() -> int:
    """Bytes this process can still allocate: available memory, and what ``RLIMIT_AS`` leaves of the address space."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 1 << 40
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            avail = min(avail, soft - used)
    except (ImportError, OSError, StopIteration, ValueError):
        pass
    return max(0, avail)


def fits_in_memory_share(nbytes: int, share: float) -> bool:
    """Whether ``nbytes`` take less than ``share`` of :func:`available_memory`."""
    return nbytes < share * available_memory()
