"""Option checks every command runs before any work: argparse value types and the device check.

Each check turns a bad value into one sentence (argparse prints it with the usage line, exit status 2),
so a NaN scale, an out-of-range crf or a missing GPU never costs an alignment or a model load first.
"""

import argparse
import math

from dva_model.errors import UserError
from dva_model.formats.video import MAX_CRF


def finite_float(text: str) -> float:
    """argparse type: a finite float (NaN and infinity give black or undefined faces)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float of 0 or more."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def int_in(low: int, high: float = math.inf):
    """argparse type: an int in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            bound = f"{low} or more" if high == math.inf else f"{low}-{high}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


crf_value = int_in(0, MAX_CRF)
positive_int = int_in(1)
non_negative_int = int_in(0)


def ddim_steps(text: str) -> int:
    """argparse type: a DDIM step count the release's respacing accepts (dva_model.diffusion.schedule)."""
    from dva_model.diffusion.schedule import respaced_timesteps

    value = positive_int(text)
    try:
        respaced_timesteps(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def check_device(name: str) -> str:
    """Refuse a torch device this machine does not have (before any model is loaded); returns ``name``."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name} asks for a GPU, but torch sees no CUDA GPU here; use --device cpu.")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA GPU(s) (cuda:0-cuda:{count - 1}).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: only cpu, cuda and mps are supported.")
    return name
