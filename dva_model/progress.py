"""The progress/cancel protocol every long loop of the library follows.

A loop calls ``callback(done, total)`` after each unit of work (one UNet call, one frame chunk...).
The callback may raise to cancel: ComfyUI's ProgressBar raises on Interrupt, the CLI raises
``Cancelled`` on Ctrl-C. The library never swallows that exception.
"""

from typing import Callable, Optional

ProgressCallback = Callable[[int, int], None]
# Progress of a multi-stage job: ``stage_progress("invert")`` returns that stage's callback (or None).
StageProgress = Callable[[str], Optional[ProgressCallback]]


def no_progress(_stage: str) -> Optional[ProgressCallback]:
    """The ``StageProgress`` that reports nothing."""
    return None


class Cancelled(Exception):
    """Raised by a progress callback to stop a long loop."""


def report(callback: Optional[ProgressCallback], done: int, total: int) -> None:
    """Call ``callback(done, total)`` if there is one."""
    if callback is not None:
        callback(done, total)
