"""A terminal progress callback for the CLI (the library itself never draws anything)."""

from typing import Optional

from dva_model.progress import ProgressCallback


def terminal_progress(description: str, *, enabled: bool = True, unit: str = "step") -> Optional[ProgressCallback]:
    """Return a ``callback(done, total)`` drawing a tqdm bar on stderr, or None when disabled.

    unit "B" counts bytes (shown as kB / MB / GB)."""
    if not enabled:
        return None
    from tqdm import tqdm

    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B", leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bar = None

    return callback
