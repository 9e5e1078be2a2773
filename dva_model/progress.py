"""The progress/cancel protocol every long loop of the library follows.

A loop calls ``callback(done, total)`` after each unit of work (one UNet call, one frame chunk...).
The callback may raise to cancel: ComfyUI's ProgressBar raises on Interrupt, the CLI raises
``Cancelled`` on Ctrl-C. The library never swallows that exception.
"""

from typing import Callable, Dict, Optional

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


def one_bar(callback: Optional[ProgressCallback], shares: Dict[str, int]) -> StageProgress:
    """A ``StageProgress`` that drives one bar through several stages run in the order of ``shares``.

    ``shares`` maps each stage to its units of work (e.g. network calls), so the bar's total is their sum
    and a stage's ``done / total`` fills its own share of it: the bar never jumps back between stages.
    Stages not in ``shares`` report nothing.
    """
    offsets, start = {}, 0
    for stage, units in shares.items():
        offsets[stage], start = start, start + units
    overall = start

    def stage_callback(stage: str) -> Optional[ProgressCallback]:
        if callback is None or stage not in offsets:
            return None
        offset, units = offsets[stage], shares[stage]

        def progress(done: int, total: int) -> None:
            callback(offset + (units * done // total if total else units), overall)

        return progress

    return stage_callback
