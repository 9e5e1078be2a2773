"""Runs of frames: the pieces a clip is cut into where a face is missing or the frame numbering jumps."""

from typing import Sequence

import numpy as np


def segments(starts: np.ndarray) -> list[slice]:
    """Cut range(N) before every index where ``starts`` [N] bool is True (index 0 always starts a piece)."""
    cuts = [0, *(int(i) for i in np.flatnonzero(starts) if i > 0)] if len(starts) else []
    return [slice(a, b) for a, b in zip(cuts, cuts[1:] + [len(starts)])]


def true_runs(flags: np.ndarray) -> list[slice]:
    """Maximal runs of True in ``flags`` [N] bool, as slices in order."""
    flags = np.asarray(flags, dtype=bool)
    changes = np.concatenate([[True], flags[1:] != flags[:-1]]) if len(flags) else flags
    return [piece for piece in segments(changes) if flags[piece.start]]


def consecutive_runs(frame_numbers: Sequence[int]) -> list[slice]:
    """Runs of consecutive frame numbers (n, n + 1, ...), as slices of ``frame_numbers``."""
    numbers = np.asarray(frame_numbers)
    return segments(np.concatenate([[True], np.diff(numbers) != 1]) if len(numbers) else numbers.astype(bool))
