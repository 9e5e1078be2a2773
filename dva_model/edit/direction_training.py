"""Training attribute directions from labelled face images (the release's classifier; reference section 7.1).

A linear classifier Linear(512 -> K) is fitted with binary cross-entropy on NORMALISED ArcFace
identities, one logit per attribute; its weight rows are the edit directions ``classifier.edit_identity``
uses. Legend:

    z        ArcFace(image) [512], unit; the image is horizontally flipped with probability 1/2 (the
             release's augmentation: we encode both views once and pick one per sample and step)
    z_n      (z - mean) / std, with mean / std [512] over the training identities (or given ones)
    y        labels > 0 -> 1, else 0 (CelebA's -1 / 1 and plain 0 / 1 both work); unknown labels are
             left out of the loss
    loss     mean BCE-with-logits(Linear(z_n), y); Adam lr 1e-3, batch 32, shuffled epochs with the last
             partial batch dropped, 300,000 samples (9,375 steps) as released; an EMA copy (0.9999) is kept
             for the release's checkpoint layout, editing uses the plain weights

Labels come from a CSV (a file-name column, then one column per attribute) or from CelebAMask-HQ's
``CelebAMask-HQ-attribute-anno.txt`` (a count line, a line of 40 names, then ``name v1 ... v40``).
"""

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dva_model.edit.classifier import AttributeClassifier
from dva_model.constants import CELEBA_ATTRIBUTES, CROP_SIZE, ID_DIM
from dva_model.errors import UserError
from dva_model.formats.files import read_safetensors, write_atomically, write_safetensors
from dva_model.formats.image_io import IMAGE_SUFFIXES
from dva_model.model import DVAModel
from dva_model.progress import ProgressCallback, report

logger = logging.getLogger(__name__)

RELEASE_SAMPLES = 300_000  # the release's total_samples for the classifier
RELEASE_BATCH_SIZE = 32
RELEASE_STEPS = RELEASE_SAMPLES // RELEASE_BATCH_SIZE  # 9,375
FEATURES_FORMAT = "dva-identity-features/1"
UNKNOWN_LABELS = ("", "na", "nan", "?", "none")

PathLike = Union[str, Path]


@dataclass(frozen=True, kw_only=True)
class DirectionTrainingConfig:
    """Optimiser settings; the defaults are the release's."""

    steps: int = RELEASE_STEPS
    batch_size: int = RELEASE_BATCH_SIZE
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}.")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"Need learning_rate > 0, weight_decay >= 0 and 0 <= ema_decay < 1, got "
                             f"{self.learning_rate}, {self.weight_decay}, {self.ema_decay}.")


@dataclass(frozen=True, kw_only=True)
class LabelTable:
    """Labels of N images for K attributes: labels [N, K] float32, 1 / 0, NaN where unknown."""

    files: Tuple[str, ...]
    attributes: Tuple[str, ...]
    labels: Tensor

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.files), len(self.attributes)):
            raise ValueError(f"labels must be [{len(self.files)}, {len(self.attributes)}], "
                             f"got {tuple(self.labels.shape)}.")

    def select(self, attributes: Sequence[str]) -> "LabelTable":
        """The columns ``attributes`` (case-insensitive), in that order."""
        lowered = [a.lower() for a in self.attributes]
        missing = [a for a in attributes if a.lower() not in lowered]
        if missing:
            raise UserError(f"The label file has no column {', '.join(missing)}; it has {', '.join(self.attributes)}.")
        columns = [lowered.index(a.lower()) for a in attributes]
        return LabelTable(files=self.files, attributes=tuple(self.attributes[c] for c in columns),
                          labels=self.labels[:, columns])


@dataclass(frozen=True, kw_only=True)
class TrainedDirections:
    """The fitted classifier: directions (``classifier``), bias [K], EMA weights and the loss of every step."""

    classifier: AttributeClassifier
    bias: Tensor
    ema_weight: Tensor
    ema_bias: Tensor
    losses: Tuple[float, ...]


def _label_value(text: str, where: str) -> float:
    if text.strip().lower() in UNKNOWN_LABELS:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: label {text!r} is not a number; use 1 / -1 or 1 / 0 (empty for unknown).") from None
    return 1.0 if value > 0 else 0.0


def read_labels(path: PathLike) -> LabelTable:
    """Read a label CSV or a CelebAMask-HQ attribute file (recognised by its first line, a count)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The label file {path} does not exist.")
    with path.open(newline="", encoding="utf-8") as file:
        first = file.readline().strip()
    return _read_celebahq(path) if first.isdigit() else _read_csv(path)


def _read_csv(path: Path) -> LabelTable:
    with path.open(newline="", encoding="utf-8") as file:
        rows = [row for row in csv.reader(file) if any(cell.strip() for cell in row)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"{path} needs a header (file column, then attribute columns) and at least one row.")
    attributes = tuple(name.strip() for name in rows[0][1:])
    files, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise UserError(f"{path} line {line} has {len(row)} cells; the header has {len(rows[0])}.")
        files.append(row[0].strip())
        values.append([_label_value(cell, f"{path} line {line}") for cell in row[1:]])
    return LabelTable(files=tuple(files), attributes=attributes, labels=torch.tensor(values, dtype=torch.float32))


def _read_celebahq(path: Path) -> LabelTable:
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    if not lines:
        raise UserError(f"{path} has no attribute-name line after its count line.")
    attributes = tuple(lines[0])
    files, values = [], []
    for line, fields in enumerate(lines[1:], start=3):
        if len(fields) != len(attributes) + 1:
            raise UserError(f"{path} line {line} has {len(fields) - 1} labels for {len(attributes)} attributes.")
        files.append(fields[0])
        values.append([_label_value(cell, f"{path} line {line}") for cell in fields[1:]])
    return LabelTable(files=tuple(files), attributes=attributes, labels=torch.tensor(values, dtype=torch.float32))


def resolve_images(folder: PathLike, files: Sequence[str]) -> List[Path]:
    """The image of each label row: ``folder/<file>``, else a file of ``folder`` with the same stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of face images.")
    by_stem: Dict[str, Path] = {}
    for candidate in sorted(folder.iterdir()):
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(candidate.stem, candidate)
    paths, missing = [], []
    for name in files:
        path = folder / name if (folder / name).is_file() else by_stem.get(Path(name).stem)
        if path is None:
            missing.append(name)
        paths.append(path)
    if missing:
        raise UserError(f"{len(missing)} labelled images are not in {folder} (e.g. {', '.join(missing[:3])}); "
                        "fix the names or remove those rows.")
    return paths


def load_face_image(path: Path, *, size: int = CROP_SIZE) -> Tensor:
    """An aligned face image as [3, size, size] float32 in [-1, 1]: short side resized to ``size``
    (bilinear, antialiased), then centre-cropped, as the release's dataset does."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            scale = size / min(width, height)
            resized = (max(size, int(width * scale)), max(size, int(height * scale)))
            if resized != image.size:
                image = image.resize(resized, Image.BILINEAR)
            left = int(round((resized[0] - size) / 2.0))
            top = int(round((resized[1] - size) / 2.0))
            pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path} is not a readable image ({error}).") from error
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0  # [H, W, 3] -> [3, H, W]


@torch.no_grad()
def extract_identities(
    model: DVAModel,
    paths: Sequence[Path],
    *,
    flips: bool = True,
    batch_size: int = 16,
    callback: Optional[ProgressCallback] = None,
) -> Tensor:
    """ArcFace identities of images: [N, V, 512] float32 unit on the CPU, V = 2 (image, mirror) or 1."""
    encoder = model.encoder
    parameter = next(encoder.parameters())
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    out = []
    for done, chunk in enumerate(chunks, start=1):
        crops = torch.stack([load_face_image(p) for p in chunk]).to(parameter.device, parameter.dtype)
        views = [crops, crops.flip(dims=[3])] if flips else [crops]
        out.append(torch.stack([encoder.encode_identity(v).float().cpu() for v in views], dim=1))
        report(callback, done, len(chunks))
    return torch.cat(out)


def feature_statistics(features: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and (unbiased) std [512] of identities [N, 512] or [N, V, 512] (first view only), as in
    the release's latent.pkl (which it took over one batch only; we take all)."""
    if features.ndim == 3:
        features = features[:, 0]
    if features.ndim != 2 or features.shape[1] != ID_DIM or len(features) < 2:
        raise ValueError(f"Need at least two identities [N, {ID_DIM}] for statistics, got {tuple(features.shape)}.")
    return features.mean(dim=0), features.std(dim=0)


def _batch_order(count: int, batch_size: int, steps: int, generator: torch.Generator):
    """Indices [batch_size] per step: shuffled epochs, last partial batch dropped (a DataLoader's order)."""
    per_epoch = count // batch_size
    done = 0
    while done < steps:
        permutation = torch.randperm(count, generator=generator)
        for b in range(min(per_epoch, steps - done)):
            yield permutation[b * batch_size:(b + 1) * batch_size]
        done += per_epoch


def train_directions(
    features: Tensor,
    labels: Tensor,
    *,
    attribute_names: Sequence[str],
    mean: Tensor,
    std: Tensor,
    config: DirectionTrainingConfig = DirectionTrainingConfig(),
    callback: Optional[ProgressCallback] = None,
) -> TrainedDirections:
    """Fit Linear(512 -> K) with BCE on normalised identities (module docstring).

    features: [N, 512] or [N, V, 512] float (V views, one drawn per sample and step); labels: [N, K]
    float, > 0 positive, NaN unknown; mean, std: [512]. ``callback(step, steps)`` after every step.
    """
    features = features[:, None] if features.ndim == 2 else features
    if features.ndim != 3 or features.shape[2] != ID_DIM or labels.shape[0] != features.shape[0]:
        raise ValueError(f"features must be [N, ({ID_DIM} or V, {ID_DIM})] and labels [N, K], got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}.")
    if labels.ndim != 2 or labels.shape[1] != len(attribute_names):
        raise ValueError(f"labels must have one column per attribute name ({len(attribute_names)}), "
                         f"got {tuple(labels.shape)}.")
    count, views = features.shape[:2]
    if count == 0:
        raise ValueError("No labelled identities to train on.")
    batch_size = min(config.batch_size, count)
    if batch_size < config.batch_size:
        logger.warning("Only %d images: training with batches of %d instead of %d.", count, batch_size,
                       config.batch_size)
    known = ~torch.isnan(labels)
    targets = torch.where(known, (labels > 0).float(), torch.zeros_like(labels))
    normalised = (features.float() - mean.float()) / std.float()  # [N, V, 512]
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        linear = nn.Linear(ID_DIM, labels.shape[1])  # PyTorch's default init, as the release
    ema = {name: p.detach().clone() for name, p in linear.named_parameters()}
    optimiser = torch.optim.Adam(linear.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    losses = []
    for step, rows in enumerate(_batch_order(count, batch_size, config.steps, generator), start=1):
        view = torch.randint(views, (len(rows),), generator=generator)
        mask = known[rows].float()
        per_label = F.binary_cross_entropy_with_logits(linear(normalised[rows, view]), targets[rows], reduction="none")
        loss = (per_label * mask).sum() / mask.sum().clamp(min=1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for name, p in linear.named_parameters():
                ema[name].mul_(config.ema_decay).add_(p.detach(), alpha=1 - config.ema_decay)
        losses.append(loss.item())
        report(callback, step, config.steps)
    logger.info("direction training: BCE %.4f -> %.4f over %d steps", losses[0], losses[-1], len(losses))
    classifier = AttributeClassifier(weight=linear.weight.detach().clone(), mean=mean.float().clone(),
                                     std=std.float().clone(), attribute_names=tuple(attribute_names))
    return TrainedDirections(classifier=classifier, bias=linear.bias.detach().clone(), ema_weight=ema["weight"],
                             ema_bias=ema["bias"], losses=tuple(losses))


def save_release_classifier(path: PathLike, trained: TrainedDirections) -> Path:
    """Write the release's ``last.ckpt`` layout (state_dict with conds_mean / conds_std [1, 512],
    classifier.* and ema_classifier.*). That layout carries no names, so it must be CelebA's 40, in order."""
    classifier = trained.classifier
    if tuple(classifier.attribute_names) != CELEBA_ATTRIBUTES:
        raise ValueError("The release's classifier layout holds CelebA's 40 attributes in their fixed order only; "
                         "save other attributes in our .safetensors direction format.")
    state = {"conds_mean": classifier.mean[None].clone(), "conds_std": classifier.std[None].clone(),
             "classifier.weight": classifier.weight.clone(), "classifier.bias": trained.bias.clone(),
             "ema_classifier.weight": trained.ema_weight.clone(), "ema_classifier.bias": trained.ema_bias.clone()}
    checkpoint = {"state_dict": state, "global_step": len(trained.losses)}
    path = Path(path)
    write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
    return path


def save_features(path: PathLike, files: Sequence[str], features: Tensor) -> Path:
    """Cache extracted identities [N, V, 512] with their image names (safetensors, atomically)."""
    metadata = {"format": FEATURES_FORMAT, "files": json.dumps(list(files))}
    return write_safetensors(path, {"features": features}, metadata)


def load_features(path: PathLike) -> Tuple[Tuple[str, ...], Tensor]:
    """Read a feature cache written by ``save_features``: (image names, features [N, V, 512])."""
    tensors, metadata = read_safetensors(path, what="feature cache")
    if metadata.get("format") != FEATURES_FORMAT or "features" not in tensors:
        raise UserError(f"{path} is not a DVA identity-feature cache (format {metadata.get('format')!r}).")
    return tuple(json.loads(metadata["files"])), tensors["features"]
