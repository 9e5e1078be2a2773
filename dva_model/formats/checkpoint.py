"""Reading and writing DVA model files: the authors' release and our compact safetensors.

Supported inputs of ``load_model``:
- the released PyTorch Lightning checkpoint (``epoch=51-step=1000000.ckpt``): only ``ema_model.*`` is
  used (``model.*`` and the optimiser state are ignored); the UNet architecture comes from
  ``hyper_parameters["conf"]`` when present, else from tensor shapes;
- a plain state dict in the release's key layout (``input_blocks.*``, ``encoder.idnet.*``...);
- our ``.safetensors`` (``save_model``): ``DVAModel.state_dict()`` plus the UNet config as metadata.
The released stand-alone encoder files (``model_ir_se50.pth``, the MobileNet ``.pth.tar``,
``79999_iter.pth``) can replace the encoders held in the checkpoint (``EncoderFiles``).

Every pickle goes through ``safe_pickle`` (no code from the file runs). Every key and shape is
checked, and the model is loaded with ``strict=True``.
"""

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from dva_model.constants import DVA_MODEL_FORMAT
from dva_model.errors import ModelFileError
from dva_model.formats.files import read_safetensors, write_safetensors
from dva_model.model import DVAConfig, DVAModel
from dva_model.formats.release_keys import (
    bgnet_state_from_file, idnet_state_from_file, lightning_weights, lndnet_state_from_file, model_state_from_release,
)
from dva_model.formats.safe_pickle import load_pickled
from dva_model.nets.unet import UNetConfig

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SAFETENSORS_FORMAT = DVA_MODEL_FORMAT
RELEASE_URL = "https://github.com/gmkim-ai/Diffusion-Video-Autoencoders (checkpoints/diffusion_video_autoencoder)"

# Release TrainConfig fields that leave no trace in tensor shapes -> UNetConfig.from_state_dict arguments.
_HPARAM_FIELDS = {"img_size": "image_size", "net_beatgans_attn_head": "num_heads", "dropout": "dropout"}
# What a model file may ask for, checked before anything is built: UNetConfig field -> (type, low, high).
# Generous around the release (256 px, width 128, 6 levels, 2 blocks, 1 head) yet far below what would
# not fit in memory; tuples give the range of each element.
_UNET_FIELD_LIMITS: Dict[str, Tuple[type, float, float]] = {
    "image_size": (int, 8, 4096), "in_channels": (int, 1, 16), "out_channels": (int, 1, 16),
    "model_channels": (int, 1, 1024), "channel_mult": (tuple, 1, 32), "num_res_blocks": (int, 1, 8),
    "attention_resolutions": (tuple, 1, 4096), "num_heads": (int, 1, 64), "dropout": (float, 0.0, 1.0),
    "embed_channels": (int, 1, 4096), "cond_channels": (int, 1, 4096),
}
_MAX_LEVELS = 8


@dataclass(frozen=True, kw_only=True)
class EncoderFiles:
    """Optional released stand-alone encoder files that replace the checkpoint's own encoders."""

    identity: Optional[Path] = None  # model_ir_se50.pth
    landmarks: Optional[Path] = None  # mobilenet_224_model_best_gdconv_external.pth.tar
    parser: Optional[Path] = None  # 79999_iter.pth


def load_model(
    path: PathLike,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder_files: Optional[EncoderFiles] = None,
) -> DVAModel:
    """Load any supported DVA model file into an eval-mode, frozen ``DVAModel``.

    The UNet is cast to ``dtype`` (fp32 / fp16 / bf16; its GroupNorms still compute in fp32); the
    face encoders stay in fp32, as released. Raises ModelFileError naming the file on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"The DVA checkpoint {path} does not exist; put the released epoch=51-step=1000000.ckpt "
            f"(from {RELEASE_URL}) or a converted .safetensors there."
        )
    state, config = read_model_state(path)
    _check_layout(_expected_layout(config), state, path)  # before the real model is allocated
    model = DVAModel(config=DVAConfig(unet=config))
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()}, strict=True)
    if encoder_files is not None:
        load_encoder_files(model, encoder_files)
    model.eval().requires_grad_(False)
    model.to(device)
    model.unet.to(dtype)
    return model


def read_model_state(path: Path) -> "tuple[Dict[str, Tensor], UNetConfig]":
    """Our-layout state dict (``unet.*``, ``encoder.*``) and the UNet config of a model file."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    checkpoint = load_pickled(path, what="The DVA checkpoint")
    if not isinstance(checkpoint, Mapping):
        raise ModelFileError(f"{path} holds a {type(checkpoint).__name__}, not a DVA checkpoint dictionary.")
    hparams = checkpoint.get("hyper_parameters")
    if "state_dict" in checkpoint:
        release = lightning_weights(checkpoint["state_dict"], path)
    else:
        release = dict(checkpoint)
    state = model_state_from_release(release, path)
    config = _unet_config(state, hparams, path)
    return state, config


def _unet_config(state: Mapping[str, Tensor], hparams: Any, path: Path) -> UNetConfig:
    """The UNet architecture: shapes give widths, levels and attention; hyper_parameters the rest."""
    unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    # The release saves conf.as_dict_jsonable() (a plain dict); older Lightning code kept {"conf": TrainConfig}.
    conf = hparams.get("conf", hparams) if isinstance(hparams, Mapping) else None
    given = {}
    for release_name, argument in _HPARAM_FIELDS.items():
        value = conf.get(release_name) if isinstance(conf, Mapping) else getattr(conf, release_name, None)
        if value is not None:
            given[argument] = _checked_field(argument, value, path, f"hyper_parameters {release_name!r}")
    try:
        return UNetConfig.from_state_dict(unet_state, **given)
    except (ValueError, KeyError) as error:
        raise ModelFileError(f"{path}: the UNet weights do not form a DVA UNet ({error}).") from error


def _read_safetensors(path: Path) -> "tuple[Dict[str, Tensor], UNetConfig]":
    state, metadata = read_safetensors(path, what="model file (convert or download it again)", error=ModelFileError)
    if metadata.get("format") == SAFETENSORS_FORMAT:
        if "unet_config" not in metadata:
            raise ModelFileError(f"{path} has no unet_config in its metadata; convert the checkpoint again "
                                 "with `python -m dva_model convert`.")
        try:
            fields = json.loads(metadata["unet_config"])
        except json.JSONDecodeError as error:
            raise ModelFileError(f"{path}: its unet_config metadata is not valid JSON ({error}); convert the "
                                 "checkpoint again with `python -m dva_model convert`.") from error
        return state, unet_config_from_fields(fields, path)
    if any(k.startswith("encoder.idnet.") for k in state):  # release layout saved as safetensors
        state = model_state_from_release(state, path)
        return state, _unet_config(state, None, path)
    raise ModelFileError(
        f"{path} is a .safetensors file but not a DVA model (metadata format {metadata.get('format')!r}); "
        "create one with `python -m dva_model convert`."
    )


def unet_config_from_fields(fields: Any, path: Path) -> UNetConfig:
    """A UNetConfig from the JSON fields of a model file, every field checked against ``_UNET_FIELD_LIMITS``."""
    if not isinstance(fields, dict):
        raise ModelFileError(f"{path}: its unet_config metadata is a {type(fields).__name__}, not an object of fields.")
    unknown = sorted(set(fields) - set(_UNET_FIELD_LIMITS))
    missing = sorted(set(_UNET_FIELD_LIMITS) - set(fields))
    if unknown or missing:
        problem = f"unknown fields {', '.join(unknown)}" if unknown else f"missing fields {', '.join(missing)}"
        raise ModelFileError(f"{path}: its unet_config metadata has {problem}; convert the checkpoint again.")
    checked = {name: _checked_field(name, value, path, f"unet_config {name!r}") for name, value in fields.items()}
    try:
        return UNetConfig(**checked)
    except ValueError as error:
        raise ModelFileError(f"{path}: its unet_config metadata is inconsistent ({error})") from error


def _checked_field(name: str, value: Any, path: Path, where: str) -> Any:
    """``value`` of UNetConfig field ``name`` if its type and range are within ``_UNET_FIELD_LIMITS``."""
    kind, low, high = _UNET_FIELD_LIMITS[name]
    if kind is tuple:
        items = value if isinstance(value, (list, tuple)) else None
        ok = items is not None and len(items) <= _MAX_LEVELS and (name != "channel_mult" or items)
        ok = ok and all(type(item) is int and low <= item <= high for item in items)
        if not ok:
            raise ModelFileError(f"{path}: {where} must be a list of at most {_MAX_LEVELS} whole numbers from "
                                 f"{low} to {high}, not {value!r:.80}.")
        return tuple(items)
    number = type(value) is int or (kind is float and type(value) is float)
    if not number or not low <= value <= high or (kind is float and value == high):
        shown = "a whole number" if kind is int else "a number"
        raise ModelFileError(f"{path}: {where} must be {shown} from {low} to {high}, not {value!r:.80}.")
    return kind(value)


def _expected_layout(config: UNetConfig) -> Dict[str, Tensor]:
    """The state dict (shapes only, nothing allocated) of a DVAModel with this UNet."""
    with torch.device("meta"):
        return DVAModel(config=DVAConfig(unet=config)).state_dict()


def _check_layout(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], path: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} wrong shapes (e.g. {'; '.join(wrong[:2])})")
        raise ModelFileError(f"{path} does not match the DVA model layout: {'; '.join(problems)}.")


def load_encoder_files(model: DVAModel, files: EncoderFiles) -> None:
    """Load the released stand-alone encoder files (those given) over ``model``'s encoders, in place."""
    targets = (
        (files.identity, model.encoder.idnet, idnet_state_from_file, "model_ir_se50.pth"),
        (files.landmarks, model.encoder.lndnet, lndnet_state_from_file,
         "mobilenet_224_model_best_gdconv_external.pth.tar"),
        (files.parser, model.encoder.bgnet, bgnet_state_from_file, "79999_iter.pth"),
    )
    for file, module, convert, release_name in targets:
        if file is None:
            continue
        raw = load_pickled(Path(file), what=f"The encoder file ({release_name})")
        try:
            module.load_state_dict(convert(raw), strict=True)
        except (ValueError, RuntimeError, TypeError, AttributeError, KeyError) as error:
            raise ModelFileError(f"{file} is not the released {release_name} ({error}).") from error


def save_model(path: PathLike, model: DVAModel, *, dtype: Optional[torch.dtype] = None) -> Path:
    """Write ``model`` as our compact ``.safetensors`` (optionally cast to fp16/bf16), atomically."""
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {"format": SAFETENSORS_FORMAT, "unet_config": json.dumps(dataclasses.asdict(model.config.unet))}
    return write_safetensors(path, state, metadata)
