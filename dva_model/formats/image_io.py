"""Folders of aligned face crops as image files <-> tensors in [-1, 1], and float pixels -> uint8."""

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from dva_model.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_UINT8 = 255.0


def list_images(folder: Path) -> List[Path]:
    """The PNG/JPG files of ``folder`` in file-name order; a UserError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of aligned face crops.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{folder} holds no .png or .jpg images; put the aligned 256x256 crops there.")
    return files


def read_crops(folder: Path, *, size: int) -> Tuple[List[str], Tensor]:
    """Load every crop of ``folder`` as [N, 3, size, size] float32 in [-1, 1].

    Crops of another size are resized bilinearly with PIL (antialiased when shrinking), as the
    release's image dataset does. Returns the file names (without suffix) and the tensor.
    """
    from PIL import Image, UnidentifiedImageError

    names, images = [], []
    for path in list_images(folder):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{path} is not a readable image ({error}).") from error
        names.append(path.stem)
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))  # [H, W, 3] -> [3, H, W]
    return names, torch.stack(images) / 127.5 - 1.0


def to_uint8(images: Union[Tensor, np.ndarray], *, value_range: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Float pixels in ``value_range`` (torch or numpy, any layout) -> uint8 numpy of the same shape.

    v = (x - low) / (high - low) * 255, rounded half up and clamped to 0..255, as torchvision's
    save_image writes PNGs (and so the release's crops). uint8 input is returned as it is.
    """
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            return images
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return images.cpu().numpy()
    low, high = value_range
    unit = (images.detach().float().cpu() - low) / (high - low)
    return unit.mul(MAX_UINT8).add(0.5).clamp(0, MAX_UINT8).to(torch.uint8).numpy()


def crops_to_uint8(crops: Tensor) -> np.ndarray:
    """Model crops [N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8 (``to_uint8``)."""
    return to_uint8(crops.permute(0, 2, 3, 1), value_range=(-1.0, 1.0))


def write_crops(folder: Path, names: Sequence[str], crops: Tensor) -> List[Path]:
    """Save crops [N, 3, H, W] in [-1, 1] as ``folder/<name>.png``, each written atomically."""
    from PIL import Image

    from dva_model.formats.files import write_atomically

    if len(names) != len(crops):
        raise ValueError(f"{len(names)} names for {len(crops)} crops.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in zip(names, crops_to_uint8(crops)):
        path = folder / f"{name}.png"
        write_atomically(path, lambda tmp, pixels=pixels: Image.fromarray(pixels).save(tmp, format="PNG"))
        paths.append(path)
    return paths
