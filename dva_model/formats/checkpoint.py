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
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from dva_model.constants import DVA_MODEL_FORMAT
from dva_model.nets import face_encoder
from dva_model.errors import ModelFileError
from dva_model.formats.files import read_safetensors, write_safetensors
from dva_model.model import DVAConfig, DVAModel
from dva_model.formats.safe_pickle import load_pickled
from dva_model.nets.unet import UNetConfig

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
RELEASE_EMA_PREFIX = "ema_model."
RELEASE_TRAIN_PREFIX = "model."
RELEASE_ENCODER_PREFIX = "encoder."
SAFETENSORS_FORMAT = DVA_MODEL_FORMAT
RELEASE_URL = "https://github.com/gmkim-ai/Diffusion-Video-Autoencoders (checkpoints/diffusion_video_autoencoder)"

# Release TrainConfig fields that leave no trace in tensor shapes -> UNetConfig.from_state_dict arguments.
_HPARAM_FIELDS = {"img_size": "image_size", "net_beatgans_attn_head": "num_heads", "dropout": "dropout"}


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
    model = DVAModel(config=DVAConfig(unet=config))
    _load_strict(model, state, path)
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
        release = _lightning_weights(checkpoint["state_dict"], path)
    else:
        release = dict(checkpoint)
    state = model_state_from_release(release, path)
    config = _unet_config(state, hparams, path)
    return state, config


def _lightning_weights(state_dict: Mapping[str, Any], path: Path) -> Dict[str, Tensor]:
    """The EMA weights of a Lightning checkpoint, unprefixed."""
    ema = {k[len(RELEASE_EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(RELEASE_EMA_PREFIX)}
    if ema:
        return ema
    trained = {k[len(RELEASE_TRAIN_PREFIX):]: v for k, v in state_dict.items() if k.startswith(RELEASE_TRAIN_PREFIX)}
    if trained:
        log.warning("%s has no ema_model.* weights; using the raw model.* weights instead.", path)
        return trained
    raise ModelFileError(
        f"{path} is a Lightning checkpoint without ema_model.* or model.* weights "
        f"(first keys: {', '.join(list(state_dict)[:3])}); is it the classifier checkpoint?"
    )


def model_state_from_release(release: Mapping[str, Tensor], path: Path) -> Dict[str, Tensor]:
    """Map the release's keys onto ``DVAModel``'s: ``encoder.*`` via the face encoder, the rest under ``unet.``."""
    unet, encoder = {}, {}
    for key, value in release.items():
        if not isinstance(value, Tensor):
            raise ModelFileError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        if key.startswith(RELEASE_ENCODER_PREFIX):
            encoder[key[len(RELEASE_ENCODER_PREFIX):]] = value
        else:
            unet[key] = value
    if not unet or not encoder:
        missing = "UNet (input_blocks.*...)" if not unet else "face encoder (encoder.*)"
        raise ModelFileError(f"{path} has no {missing} weights; it is not a Diffusion Video Autoencoder checkpoint.")
    try:
        encoder = face_encoder.encoder_state_from_release(encoder)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error
    state = {f"unet.{k}": v for k, v in unet.items()}
    state.update({f"encoder.{k}": v for k, v in encoder.items()})
    return state


def _unet_config(state: Mapping[str, Tensor], hparams: Any, path: Path) -> UNetConfig:
    """The UNet architecture: shapes give widths, levels and attention; hyper_parameters the rest."""
    unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    # The release saves conf.as_dict_jsonable() (a plain dict); older Lightning code kept {"conf": TrainConfig}.
    conf = hparams.get("conf", hparams) if isinstance(hparams, Mapping) else None
    given = {}
    for release_name, argument in _HPARAM_FIELDS.items():
        value = conf.get(release_name) if isinstance(conf, Mapping) else getattr(conf, release_name, None)
        if value is not None:
            given[argument] = value
    try:
        return UNetConfig.from_state_dict(unet_state, **given)
    except (ValueError, KeyError) as error:
        raise ModelFileError(f"{path}: the UNet weights do not form a DVA UNet ({error}).") from error


def _read_safetensors(path: Path) -> "tuple[Dict[str, Tensor], UNetConfig]":
    state, metadata = read_safetensors(path, what="model file (convert or download it again)", error=ModelFileError)
    if metadata.get("format") == SAFETENSORS_FORMAT:
        return state, UNetConfig(**_tuples(json.loads(metadata["unet_config"])))
    if any(k.startswith("encoder.idnet.") for k in state):  # release layout saved as safetensors
        state = model_state_from_release(state, path)
        return state, _unet_config(state, None, path)
    raise ModelFileError(
        f"{path} is a .safetensors file but not a DVA model (metadata format {metadata.get('format')!r}); "
        "create one with `python -m dva_model convert`."
    )


def _tuples(fields: Dict[str, Any]) -> Dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def _load_strict(model: DVAModel, state: Mapping[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
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
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_encoder_files(model: DVAModel, files: EncoderFiles) -> None:
    """Load the released stand-alone encoder files (those given) over ``model``'s encoders, in place."""
    targets = (
        (files.identity, model.encoder.idnet, face_encoder.idnet_state_from_file, "model_ir_se50.pth"),
        (files.landmarks, model.encoder.lndnet, face_encoder.lndnet_state_from_file,
         "mobilenet_224_model_best_gdconv_external.pth.tar"),
        (files.parser, model.encoder.bgnet, face_encoder.bgnet_state_from_file, "79999_iter.pth"),
    )
    for file, module, convert, release_name in targets:
        if file is None:
            continue
        raw = load_pickled(Path(file), what=f"The encoder file ({release_name})")
        try:
            module.load_state_dict(convert(raw), strict=True)
        except (ValueError, RuntimeError) as error:
            raise ModelFileError(f"{file} is not the released {release_name} ({error}).") from error


def save_model(path: PathLike, model: DVAModel, *, dtype: Optional[torch.dtype] = None) -> Path:
    """Write ``model`` as our compact ``.safetensors`` (optionally cast to fp16/bf16), atomically."""
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {"format": SAFETENSORS_FORMAT, "unet_config": json.dumps(dataclasses.asdict(model.config.unet))}
    return write_safetensors(path, state, metadata)


def release_state_from_model(model: DVAModel) -> Dict[str, Tensor]:
    """The inverse mapping: ``model``'s weights in the release's key layout (for tests and exports)."""
    state = model.state_dict()
    release = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    release.update({f"encoder.{k}": v for k, v in face_encoder.release_state_from_encoder(encoder).items()})
    return release
