"""The release's key layouts <-> our modules' state dicts: the one converter of official weights.

The released DVA checkpoint (a Lightning file: ``ema_model.*`` / ``model.*``; UNet keys bare, face
encoder keys under ``encoder.``) and the three separately released encoder files (model_ir_se50.pth,
mobilenet_224_model_best_gdconv_external.pth.tar, 79999_iter.pth) map onto ``DVAModel`` /
``FaceEncoder`` keys here, in both directions; every key and shape is checked against the module.
The networks themselves (``dva_model.nets``) know nothing of these layouts.

The landmark net is the one layout that differs: the release stores its MobileNetV2 features twice,
as ``pretrain_net.features.*`` and ``base_net.0.*`` (one module under two names), plus an unused
ImageNet head ``pretrain_net.classifier.*``; we keep one copy as ``features.*``.
"""

import functools
import logging
from pathlib import Path
from typing import Any, Dict, Final, Mapping

import torch
from torch import Tensor

from dva_model.errors import ModelFileError
from dva_model.model import DVAModel
from dva_model.nets.face_encoder import FaceEncoder
from dva_model.nets.landmark_net import MOBILENET_LAST_CHANNELS

log = logging.getLogger(__name__)

RELEASE_EMA_PREFIX = "ema_model."
RELEASE_TRAIN_PREFIX = "model."
RELEASE_ENCODER_PREFIX = "encoder."
_LANDMARK_RELEASE_PREFIX = "lndnet.backbone."
_MODULE_PREFIX = "module."  # nn.DataParallel's prefix in the landmark net's training checkpoint
_BN_COUNTER = "num_batches_tracked"

# Release key prefixes of the landmark net (relative to its MobileNet_GDConv module).
_RELEASE_FEATURES: Final = "pretrain_net.features."
_RELEASE_ALIAS: Final = "base_net.0."
_RELEASE_UNUSED_HEAD: Final = "pretrain_net.classifier."
_RELEASE_HEAD_PREFIXES: Final = ("linear7.", "linear1.")
_IMAGENET_CLASSES: Final = 1000  # size of the unused torchvision classifier head (index 1 of a Sequential)


# ---------------------------------------------------------------------------------------------------
# The DVA checkpoint


def lightning_weights(state_dict: Mapping[str, Any], path: Path) -> Dict[str, Tensor]:
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
        encoder = encoder_state_from_release(encoder)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error
    state = {f"unet.{k}": v for k, v in unet.items()}
    state.update({f"encoder.{k}": v for k, v in encoder.items()})
    return state


def release_state_from_model(model: DVAModel) -> Dict[str, Tensor]:
    """The inverse mapping: ``model``'s weights in the release's key layout (for tests and exports)."""
    state = model.state_dict()
    release = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    release.update({f"encoder.{k}": v for k, v in release_state_from_encoder(encoder).items()})
    return release


# ---------------------------------------------------------------------------------------------------
# The face encoder


@functools.cache
def _encoder_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``FaceEncoder``'s state dict (built once, on the meta device: no memory, no init)."""
    with torch.device("meta"):
        encoder = FaceEncoder()
    return {k: tuple(v.shape) for k, v in encoder.state_dict().items()}


def _expected_shapes(module: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``FaceEncoder`` (module "") or of one of its submodules (keys relative to it)."""
    prefix = f"{module}." if module else ""
    return {k[len(prefix):]: v for k, v in _encoder_shapes().items() if k.startswith(prefix)}


def _check_state(sd: Mapping[str, Tensor], module: str, source: str) -> dict[str, Tensor]:
    """Return ``sd`` as a dict after checking that its keys and shapes are exactly ``module``'s."""
    expected = _expected_shapes(module)
    what = f"FaceEncoder.{module}" if module else "FaceEncoder"
    not_tensors = sorted(k for k, v in sd.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ValueError(f"{source} holds non-tensor entries at {not_tensors[:8]}; expected only weight tensors.")
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{source} does not fit {what}: missing keys {missing[:8]} ({len(missing)} in all), "
                         f"unexpected keys {unexpected[:8]} ({len(unexpected)} in all); check that the file is "
                         "the released one.")
    wrong = [f"{k}: {tuple(sd[k].shape)} != {expected[k]}" for k in expected if tuple(sd[k].shape) != expected[k]]
    if wrong:
        raise ValueError(f"{source} has tensors of the wrong shape for {what}: {wrong[:8]} ({len(wrong)} in all); "
                         "check that the file is the released one.")
    return dict(sd)


def _fill_bn_counters(sd: dict[str, Tensor], module: str) -> dict[str, Tensor]:
    """Add BatchNorm ``num_batches_tracked`` counters (0) that files saved by old PyTorch lack (unused here)."""
    for key in _expected_shapes(module):
        if key.endswith(_BN_COUNTER):
            sd.setdefault(key, torch.zeros((), dtype=torch.long))
    return sd


def _split_landmarks(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(``lndnet.backbone.*`` entries with that prefix removed, all other entries)."""
    landmark = {k[len(_LANDMARK_RELEASE_PREFIX):]: v for k, v in sd.items() if k.startswith(_LANDMARK_RELEASE_PREFIX)}
    return landmark, {k: v for k, v in sd.items() if not k.startswith(_LANDMARK_RELEASE_PREFIX)}


def encoder_state_from_release(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map the release's ``encoder.*`` tensors (prefix already stripped) onto ``FaceEncoder`` keys.

    ``idnet.*``, ``bgnet.*`` and ``linear.*`` keep their names. ``lndnet.backbone.*`` is remapped by
    ``landmark_state_from_release``: ``pretrain_net.features.*`` -> ``features.*``, the alias
    ``base_net.0.*`` is checked equal and dropped, the unused ``pretrain_net.classifier.*`` is dropped.
    Raises ValueError naming any missing, unexpected or wrongly shaped key. Tensors are not copied.
    """
    landmark, out = _split_landmarks(sd)
    landmark = landmark_state_from_release(landmark, key_prefix=_LANDMARK_RELEASE_PREFIX)
    out.update({_LANDMARK_RELEASE_PREFIX + k: v for k, v in landmark.items()})
    return _check_state(out, "", "The checkpoint's encoder.* state")


def release_state_from_encoder(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``encoder_state_from_release``: ``FaceEncoder`` keys -> the release's ``encoder.*`` keys
    (without ``encoder.``), i.e. all 1,228 keys of official-keys.tsv; see ``landmark_state_to_release``."""
    landmark, out = _split_landmarks(_check_state(sd, "", "The FaceEncoder state"))
    out.update({_LANDMARK_RELEASE_PREFIX + k: v for k, v in landmark_state_to_release(landmark).items()})
    return out


def idnet_state_from_file(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map model_ir_se50.pth (raw IR-SE50 keys ``input_layer.*``, ``body.*``, ``output_layer.*``) onto
    ``FaceEncoder.idnet`` keys (``backbone.*``). Missing BatchNorm counters are filled with 0."""
    out = _fill_bn_counters({"backbone." + k: v for k, v in sd.items()}, "idnet")
    return _check_state(out, "idnet", "model_ir_se50.pth")


def lndnet_state_from_file(sd: Mapping[str, Any]) -> dict[str, Tensor]:
    """Map mobilenet_224_model_best_gdconv_external.pth.tar onto ``FaceEncoder.lndnet`` keys (``backbone.*``).

    ``sd`` is the loaded file: a dict whose ``"state_dict"`` holds ``module.``-prefixed keys of the
    release's MobileNet_GDConv (``pretrain_net.*`` and its alias ``base_net.0.*``, ``linear7.*``,
    ``linear1.*``); other entries of the file (epoch, optimiser...) are ignored. A bare state dict is
    accepted too, and so are keys without the ``module.`` prefix (the release would ignore them).
    """
    inner = sd["state_dict"] if "state_dict" in sd else sd
    stripped = {k.removeprefix(_MODULE_PREFIX): v for k, v in inner.items()}
    landmark = landmark_state_from_release(stripped, key_prefix=_MODULE_PREFIX)
    out = _fill_bn_counters({"backbone." + k: v for k, v in landmark.items()}, "lndnet")
    return _check_state(out, "lndnet", "mobilenet_224_model_best_gdconv_external.pth.tar")


def bgnet_state_from_file(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map 79999_iter.pth (raw BiSeNet keys ``cp.*``, ``ffm.*``, ``conv_out*.*``) onto ``FaceEncoder.bgnet``
    keys (``backbone.*``). Missing BatchNorm counters are filled with 0."""
    out = _fill_bn_counters({"backbone." + k: v for k, v in sd.items()}, "bgnet")
    return _check_state(out, "bgnet", "79999_iter.pth")


def _strip_backbone(sd: Mapping[str, Tensor], module: str, source: str) -> dict[str, Tensor]:
    """Check ``sd`` against ``FaceEncoder.<module>`` and return it with ``backbone.`` removed from its keys."""
    sd = _check_state(sd, module, f"The FaceEncoder.{module} state for {source}")
    return {k[len("backbone."):]: v for k, v in sd.items()}


def idnet_file_state(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``idnet_state_from_file``: ``FaceEncoder.idnet`` state -> model_ir_se50.pth's content."""
    return _strip_backbone(sd, "idnet", "model_ir_se50.pth")


def lndnet_file_state(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Inverse of ``lndnet_state_from_file``: ``FaceEncoder.lndnet`` state -> the content of
    mobilenet_224_model_best_gdconv_external.pth.tar (``{"state_dict": {"module.<release key>": ...}}``)."""
    release = landmark_state_to_release(_strip_backbone(sd, "lndnet", "the landmark-net file"))
    return {"state_dict": {_MODULE_PREFIX + k: v for k, v in release.items()}}


def bgnet_file_state(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``bgnet_state_from_file``: ``FaceEncoder.bgnet`` state -> 79999_iter.pth's content."""
    return _strip_backbone(sd, "bgnet", "79999_iter.pth")


# ---------------------------------------------------------------------------------------------------
# The landmark net


def landmark_state_from_release(sd: Mapping[str, Tensor], *, key_prefix: str = "") -> dict[str, Tensor]:
    """Map the release's MobileNet_GDConv keys onto ``MobileNetV2GDConv`` keys.

    ``sd`` holds keys relative to the release module: ``pretrain_net.features.*`` and/or its alias
    ``base_net.0.*`` (when both are present they must be equal), ``pretrain_net.classifier.*`` (unused
    ImageNet head, dropped) and ``linear7.*`` / ``linear1.*``. Returns ``features.*``, ``linear7.*``,
    ``linear1.*``. Raises ValueError for a key outside that layout or for aliases that differ.
    Completeness and shapes are checked by the caller against the module. ``key_prefix`` is what the
    keys were called in the caller's file, for error messages only.
    """
    out: dict[str, Tensor] = {}
    aliases: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key.startswith(_RELEASE_FEATURES):
            out["features." + key[len(_RELEASE_FEATURES):]] = value
        elif key.startswith(_RELEASE_ALIAS):
            aliases["features." + key[len(_RELEASE_ALIAS):]] = value
        elif key.startswith(_RELEASE_HEAD_PREFIXES):
            out[key] = value
        elif not key.startswith(_RELEASE_UNUSED_HEAD):
            unknown.append(key)
    if unknown:
        named = [key_prefix + k for k in sorted(unknown)[:8]]
        raise ValueError(f"Unexpected landmark-net keys {named} (of {len(unknown)}); expected "
                         f"{_RELEASE_FEATURES}*, {_RELEASE_ALIAS}*, {_RELEASE_UNUSED_HEAD}*, linear7.*, "
                         "linear1.*: is this the mobilenet_224_model_best_gdconv_external checkpoint?")
    differing = [k for k, v in aliases.items() if k in out and not torch.equal(out[k], v)]
    if differing:
        named = [key_prefix + _RELEASE_ALIAS + k[len("features."):] for k in sorted(differing)[:8]]
        raise ValueError(f"The landmark net's {_RELEASE_FEATURES}* and {_RELEASE_ALIAS}* copies differ at "
                         f"{named} (of {len(differing)}); they must hold the same tensors, "
                         "so the checkpoint is corrupt or was edited.")
    for key, value in aliases.items():
        out.setdefault(key, value)
    return out


def landmark_state_to_release(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``landmark_state_from_release``: ``MobileNetV2GDConv`` keys -> the release's layout.

    ``features.*`` appears twice, as ``pretrain_net.features.*`` and ``base_net.0.*`` (the same tensor
    objects, as in the release, where one module has two names); the unused ImageNet head
    ``pretrain_net.classifier.1.{weight,bias}`` is filled with zeros so the result loads strictly into
    the release's MobileNet_GDConv.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("features."):
            rest = key[len("features."):]
            out[_RELEASE_FEATURES + rest] = value
            out[_RELEASE_ALIAS + rest] = value
        else:
            out[key] = value
    like = sd["linear1.conv.weight"]
    out[_RELEASE_UNUSED_HEAD + "1.weight"] = like.new_zeros(_IMAGENET_CLASSES, MOBILENET_LAST_CHANNELS)
    out[_RELEASE_UNUSED_HEAD + "1.bias"] = like.new_zeros(_IMAGENET_CLASSES)
    return out
