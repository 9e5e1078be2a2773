"""The frozen face encoders of DVA and the z_face projection (dva-reference.md sections 3.2-3.5).

``FaceEncoder`` bundles ArcFace (``idnet``), the landmark regressor (``lndnet``), the face parser
(``bgnet``) and the only trainable part, ``linear``: z_face = Linear([z_id ; z_lnd]). Its state-dict
keys are the release's ``encoder.*`` keys without ``encoder.``, except the landmark net (see
``landmark_net``). This file also maps the release's key layouts (the DVA checkpoint and the three
separately released weight files) onto this module.
"""

import functools
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .arcface import IdentityEncoder
from .bisenet import FaceParser
from dva_model.constants import CROP_SIZE, FACE_COND_DIM, ID_DIM, LANDMARK_DIM
from .landmark_net import LandmarkEncoder, landmark_state_from_release, landmark_state_to_release

_LANDMARK_RELEASE_PREFIX = "lndnet.backbone."
_MODULE_PREFIX = "module."  # nn.DataParallel's prefix in the landmark net's training checkpoint
_BN_COUNTER = "num_batches_tracked"


class FaceEncoder(nn.Module):
    """ArcFace + landmark regressor + face parser (all frozen) and the z_face linear layer.

    Legend: z_id [B, 512] unit ArcFace embedding; z_lnd [B, 102] 51 landmark points in [0, 1];
    z_face [B, 512] = linear(concat(z_id, z_lnd)), the UNet's condition.
    """

    def __init__(self) -> None:
        super().__init__()
        self.idnet = IdentityEncoder()
        self.lndnet = LandmarkEncoder()
        self.bgnet = FaceParser()
        self.linear = nn.Linear(ID_DIM + LANDMARK_DIM, FACE_COND_DIM)

    def encode_identity(self, x: Tensor) -> Tensor:
        """ArcFace identity: x [B, 3, H, W] float in [-1, 1] (256 aligned crops) -> z_id [B, 512] unit."""
        return self.idnet(x)

    def encode_landmarks(self, x: Tensor) -> Tensor:
        """Landmarks without the jaw: x [B, 3, H, W] float in [-1, 1] -> z_lnd [B, 102] in [0, 1].

        The regressor reads fixed pixel rows of a 256 crop, so crops of a model trained at another size
        are first resized to 256 (bilinear, antialiased), in training and inference alike.
        """
        if x.shape[-2:] != (CROP_SIZE, CROP_SIZE):
            x = F.interpolate(x, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.lndnet(x)

    def face_condition(self, z_id: Tensor, z_lnd: Tensor) -> Tensor:
        """z_face = Linear([z_id ; z_lnd]): z_id [B, 512], z_lnd [B, 102] -> z_face [B, 512] (no activation)."""
        if z_id.ndim != 2 or z_lnd.ndim != 2 or z_id.shape[1] != ID_DIM or z_lnd.shape[1] != LANDMARK_DIM \
                or z_id.shape[0] != z_lnd.shape[0]:
            raise ValueError(f"face_condition expects z_id [B, {ID_DIM}] and z_lnd [B, {LANDMARK_DIM}] with the "
                             f"same B, got {tuple(z_id.shape)} and {tuple(z_lnd.shape)}; expand a clip-level "
                             "z_id to one row per frame.")
        return self.linear(torch.cat([z_id, z_lnd], dim=1))

    def parse(self, x: Tensor) -> Tensor:
        """Face parsing: x [B, 3, H, W] float in [-1, 1] -> labels [B, H, W] int64 in 0..18."""
        return self.bgnet(x)

    def forward(self, x: Tensor) -> Tensor:
        """Per-frame z_face as in training: x [B, 3, 256, 256] in [-1, 1] -> z_face [B, 512]."""
        return self.face_condition(self.encode_identity(x), self.encode_landmarks(x))


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
