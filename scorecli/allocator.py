"""The C allocator's settings for a scoring process: large temporaries go back to the system when freed."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameter for the size from which a block is its own mmap, given back to the system when freed.
_M_MMAP_THRESHOLD = -3
# Below this size blocks come from malloc's arenas. glibc's default raises the threshold up to 32 MiB as blocks
# are freed, so the 2-6 MiB activations of a batch stay in each worker thread's arena, free but held: scoring
# samples/long.jsonl with SmolLM2 (float32, 2 workers) peaked at 1,393-1,527 MiB, two arenas holding 330 MiB
# with 29 MiB in use. At 2 MiB it peaked at 1,257 MiB, at the cost of 2.2M page faults instead of 1.5M (system
# time 7.7 s instead of 4-5 s, of 160 s); at 1 MiB, 1,156-1,230 MiB but 14M faults (40 s); at 8 MiB, no gain.
MMAP_THRESHOLD_BYTES = 2 * 2**20


def return_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have malloc give blocks of `threshold` bytes and more back to the system when freed; False where it cannot."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator's own policy stands
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
