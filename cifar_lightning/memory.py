"""Keep freed CPU memory in the process instead of handing it back to the OS.

glibc serves large allocations with a fresh mmap and unmaps them on free (above a threshold that
it adjusts as it goes), and hands freed heap memory back to the OS. A training step frees and
reallocates the same multi-MB activations and gradients every time, so it keeps touching new
pages and pays a page fault per 4 KB. With the two settings below, an epoch of the earlier
fast_cpu recipe (fastnet 48/128/128, batch 512, fp32) on 2 CPU cores took 69.9 s instead of 74.4
s (benchmarks/loop_overhead.py with and without retain_cpu_memory=false, README "Benchmarks").
PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or tcmalloc; mallopt
needs nothing installed. Tensors on a GPU are unaffected (they have CUDA's caching allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # free memory at the top of the heap is returned to the OS beyond this
M_MMAP_THRESHOLD = -3  # allocations at least this big get their own mmap
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit: 32 MB
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GB of freed heap for reuse


@functools.cache
def retain_freed_memory() -> bool:
    """Apply the settings once per process (they are inherited by forked DataLoader workers).
    Returns whether they took effect: False where the C library is not glibc (macOS, Windows,
    musl), which then keeps its own behaviour."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; both must hold, or freed blocks still go back to the OS.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and (
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
