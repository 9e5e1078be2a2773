"""Giving freed host memory back to the OS while a long clip streams through worker threads.

A streamed edit allocates and frees the same large buffers (frames, chunks of crops, masks) over and
over in several threads. glibc's malloc keeps one heap ("arena") per thread and, once a few buffers
of a size have been freed, serves that size from those heaps instead of giving each its own mapping
(its mmap threshold follows the largest freed buffer). Freed pages then stay resident as holes, and
the process's resident size creeps up with the clip's length although the live data does not.
``trim_heap`` (glibc's ``malloc_trim``) hands every free page of every arena back to the OS; the
pipeline calls it once per chunk, which costs well under a millisecond against a chunk's seconds.
Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""

import ctypes
import ctypes.util
import functools
import logging
from typing import Optional

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[ctypes._CFuncPtr]:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        function = None
    if function is not None:
        function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def trim_heap() -> bool:
    """Return the free pages of every malloc arena to the OS; True where that is possible (glibc)."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
