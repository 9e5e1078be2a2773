"""Text-driven identity edit by CLIP guidance, as published (Kim et al., CVPR 2023; reference section 7.2).

Only a 512-vector e is optimised, starting from the ArcFace identity of ONE reference frame. Legend:

    e_0       ArcFace(reference crop) [512], unit                      (the release's ``start_cond``)
    z_face(e) Linear([l2n(e) ; z_lnd_ref])                             the edited condition
    R         [x_800, x_600, x_400, x_200, x_0, final]: the 5-step DDIM inversion of the reference to
              x_800 with its own z_face(e_0), then its step-by-step reconstruction (no grad, computed once)
    B         one DDIM step of each of R[:-1] (kept steps 800..0) with z_face(e), in ONE UNet call
    M         the "training" foreground mask of the reference crop (background, cloth, hat excluded)

    loss = w_clip * -log((2 - L_dir(R[1:] -> B, source text -> target text)) / 2)
         + w_id   * (1 - <l2n(e), e_0>)
         + w_l1   * mean|R[1:] * M - B * M|

minimised by Adam (lr 0.002) for 2000 iterations as released. The result is the identity delta
``delta = e - e_0``; applied to any clip identity ``z_id`` (the mean over its frames) it gives

    z_id_edit = l2n(z_id + scale * delta)                              (the release; README scale 0.5)

Our default ``norm="keep"`` rescales that to |z_id| (scale 0 then returns z_id itself, as the
classifier edit's default does); ``norm="unit"`` reproduces the release. Deltas combine with attribute
edits in one fixed order: the CLIP delta first, then the classifier directions
(``dva_model.edit.identity.compose_identity_edits``).
"""

import copy
import itertools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dva_model.nets.bisenet import foreground_mask
from dva_model.edit.clip_loss import ClipDirectionalLoss, log_directional_loss
from dva_model.edit.identity import IdentityDelta
from dva_model.constants import DELTA_FORMAT, ID_DIM, LANDMARK_DIM, TRAINING_MASK_EXCLUDED
from dva_model.diffusion.ddim_invert import invert
from dva_model.diffusion.ddim_sample import sample_step, trajectory
from dva_model.errors import UserError
from dva_model.formats.files import read_safetensors, write_safetensors
from dva_model.formats.latent_io import Latent
from dva_model.model import DVAModel, unet_eps
from dva_model.progress import ProgressCallback, report
from dva_model.diffusion.schedule import DDIMCoefficients, respaced_timesteps

logger = logging.getLogger(__name__)

TRAJECTORY_STEPS = 5  # kept steps 0, 200, 400, 600, 800 (the release's n_train_step)

PathLike = Union[str, Path]


@dataclass(frozen=True, kw_only=True)
class ClipEditConfig:
    """Settings of the CLIP-guided optimisation; defaults are the release's (README weights 3 / 1 / 5)."""

    source_text: str
    target_text: str
    iterations: int = 2000
    learning_rate: float = 0.002
    clip_weight: float = 3.0
    identity_weight: float = 1.0
    l1_weight: float = 5.0
    trajectory_steps: int = TRAJECTORY_STEPS

    def __post_init__(self) -> None:
        for name in ("source_text", "target_text"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name} must be a non-empty description such as 'face', got {text!r}.")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive int (the release uses 2000), got {self.iterations!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive (the release uses 0.002), got {self.learning_rate}.")
        weights = (self.clip_weight, self.identity_weight, self.l1_weight)
        if any(not w >= 0 for w in weights):
            raise ValueError(f"Loss weights must be >= 0, got clip/identity/l1 = {weights}.")
        respaced_timesteps(self.trajectory_steps)  # raises for 1 and for counts the release cannot space


@dataclass(frozen=True, kw_only=True)
class ReferenceFrame:
    """The one frame the edit is optimised on.

    crop: [1, 3, H, W] float32 in [-1, 1]; z_id: [512] its ArcFace identity (e_0, unit);
    z_lnd: [102] its landmark feature; mask: [1, 1, H, W] float32 in {0, 1}, the training mask.
    """

    crop: Tensor
    z_id: Tensor
    z_lnd: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.crop.ndim != 4 or self.crop.shape[:2] != (1, 3):
            raise ValueError(f"crop must be [1, 3, H, W], got {tuple(self.crop.shape)}.")
        if self.z_id.shape != (ID_DIM,) or self.z_lnd.shape != (LANDMARK_DIM,):
            raise ValueError(f"z_id must be [{ID_DIM}] and z_lnd [{LANDMARK_DIM}], got "
                             f"{tuple(self.z_id.shape)} and {tuple(self.z_lnd.shape)}.")
        if self.mask.shape != (1, 1, *self.crop.shape[-2:]):
            raise ValueError(f"mask must be [1, 1, H, W] like the crop, got {tuple(self.mask.shape)}.")


class ClipEditLosses(NamedTuple):
    """The loss terms of one iteration (before its Adam step), as Python floats."""

    total: float
    clip: float
    identity: float
    l1: float


@dataclass(frozen=True, kw_only=True)
class ClipEditResult:
    """The learnt delta and the loss terms of every iteration."""

    delta: IdentityDelta
    losses: Tuple[ClipEditLosses, ...]


def _check_index(index: int, count: int) -> int:
    if not -count <= index < count:
        raise UserError(f"Reference frame {index} does not exist; the clip has frames 0..{count - 1}.")
    return index % count


def reference_from_crops(model: DVAModel, crops: Tensor, *, index: int = 0) -> ReferenceFrame:
    """Reference frame ``index`` of aligned crops [N, 3, H, W] in [-1, 1]: its ArcFace identity,
    landmarks and training mask computed by ``model``'s encoders (as the release does for frame 0)."""
    index = _check_index(index, len(crops))
    crop = crops[index:index + 1].float()
    z_id, z_lnd = model.encode_features(crop)
    mask = foreground_mask(model.parse(crop), TRAINING_MASK_EXCLUDED)
    return ReferenceFrame(crop=crop.to(z_id.device), z_id=z_id[0], z_lnd=z_lnd[0], mask=mask.float())


def reference_from_latent(
    model: DVAModel, latent: Latent, *, index: int = 0, callback: Optional[ProgressCallback] = None
) -> ReferenceFrame:
    """Reference frame ``index`` of an encoded clip, whose crops were not kept.

    The crop is the frame's reconstruction (decoded from its x_T with the latent's identity and step
    count); e_0 and z_lnd are the frame's own stored features, the mask is parsed from the
    reconstruction. ``callback(done, total)`` follows the decode's UNet calls.
    """
    index = _check_index(index, len(latent.x_T))
    crop = model.decode(latent.x_T[index:index + 1], latent.identity, latent.z_lnd[index:index + 1],
                        steps=latent.steps, callback=callback)
    mask = foreground_mask(model.parse(crop), TRAINING_MASK_EXCLUDED)
    device = crop.device
    return ReferenceFrame(crop=crop, z_id=latent.z_id[index].to(device).float(),
                          z_lnd=latent.z_lnd[index].to(device).float(), mask=mask.float())


def _autograd_ready(module: nn.Module) -> nn.Module:
    """``module``, or a copy of it when its weights are inference tensors (made under torch.inference_mode,
    as ComfyUI runs every node, also when it moves a model between devices): autograd cannot save those
    for backward. The copy costs the module's memory once more while the edit runs."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    if not any(t.is_inference() for t in tensors):
        return module
    logger.info("copying %s out of inference mode for the CLIP optimisation", type(module).__name__)
    with torch.inference_mode(False):
        return copy.deepcopy(module)


@torch.no_grad()
def reconstruction_trajectory(model: DVAModel, reference: ReferenceFrame, *, steps: int = TRAJECTORY_STEPS) -> Tensor:
    """R [steps + 1, 3, H, W] float32: the reference inverted with its own z_face over ``steps`` kept steps
    (to the last kept step), then reconstructed one DDIM step at a time: [x_last, ..., x_0, final]."""
    timesteps = respaced_timesteps(steps)
    z_face = model.face_condition(reference.z_id[None], reference.z_lnd[None])  # [1, 512]
    eps = unet_eps(model.unet)
    x = invert(eps, reference.crop.to(z_face.device), timesteps, cond=z_face, alpha_bar=model.alpha_bar)
    return torch.cat([x, *trajectory(eps, x, timesteps, cond=z_face, alpha_bar=model.alpha_bar)])


class EditObjective:
    """The published loss as a function of e [1, 512] (module docstring), with everything else precomputed.

    Built once per edit: the trajectory R of the reference, the CLIP features of R[1:] and the text
    direction. Calling it runs the ONE batched UNet step of R[:-1] and returns (loss, its terms);
    autograd follows e.
    """

    def __init__(self, model: DVAModel, clip_loss: ClipDirectionalLoss, reference: ReferenceFrame,
                 config: ClipEditConfig):
        self.config = config
        device = model.alpha_bar.device
        timesteps = respaced_timesteps(config.trajectory_steps)
        with torch.inference_mode(False):  # every tensor kept here must be usable by autograd
            trajectory = reconstruction_trajectory(model, reference, steps=config.trajectory_steps)  # R
            self.source, self.start = trajectory[1:], trajectory[:-1]  # R[1:] is compared with B = step(R[:-1])
            self.positions = torch.arange(len(timesteps) - 1, -1, -1, device=device)  # kept step of each item
            self.coefs = DDIMCoefficients.build(model.alpha_bar, timesteps, device)
            self.mask = reference.mask.to(device).float().clone()
            self.z_lnd = reference.z_lnd.to(device).float().clone().expand(len(self.start), -1)  # [S, 102]
            self.e_0 = reference.z_id.to(device).float().clone()[None]  # [1, 512]
            self.unet, self.linear = _autograd_ready(model.unet), _autograd_ready(model.encoder.linear)
            self.clip_loss = _autograd_ready(clip_loss)
            self.eps = unet_eps(self.unet)
            with torch.no_grad():
                self.text_direction = self.clip_loss.text_direction(config.source_text, config.target_text)
                self.source_features = self.clip_loss.image_features(self.source)

    def edited_states(self, e: Tensor) -> Tensor:
        """B [S, 3, H, W]: each state of R[:-1] stepped once with z_face(l2n(e)), in one UNet call."""
        z_id = F.normalize(e, dim=1).expand(len(self.start), -1)  # [S, 512]
        dtype = self.linear.weight.dtype
        z_face = self.linear(torch.cat([z_id, self.z_lnd], dim=1).to(dtype)).float()  # FaceEncoder.face_condition
        return sample_step(self.eps, self.start, self.positions, cond=z_face, coefs=self.coefs)

    def __call__(self, e: Tensor) -> Tuple[Tensor, ClipEditLosses]:
        config = self.config
        edited = self.edited_states(e)
        target_features = self.clip_loss.image_features(edited)
        directional = self.clip_loss(self.source_features, target_features, self.text_direction)
        loss_clip = log_directional_loss(directional).to(edited.device)  # CLIP may sit on another device
        loss_id = 1 - (F.normalize(e, dim=1)[0] * self.e_0[0]).sum()
        loss_l1 = (self.source * self.mask - edited * self.mask).abs().mean()
        loss = config.clip_weight * loss_clip + config.identity_weight * loss_id + config.l1_weight * loss_l1
        return loss, ClipEditLosses(loss.item(), loss_clip.item(), loss_id.item(), loss_l1.item())


def optimise_delta(
    model: DVAModel,
    clip_loss: ClipDirectionalLoss,
    reference: ReferenceFrame,
    *,
    config: ClipEditConfig,
    callback: Optional[ProgressCallback] = None,
) -> ClipEditResult:
    """Learn the identity delta of ``config``'s text edit on ``reference`` by Adam on e (module docstring).

    ``model`` and ``clip_loss`` stay frozen (only e receives gradients); ``callback(done, total)`` runs
    after every iteration and may raise to cancel. Returns the delta [512] and every iteration's losses.
    """
    if model.unet.training:
        logger.warning("The UNet is in training mode: dropout makes the edit non-deterministic; call .eval().")
    with torch.inference_mode(False), torch.enable_grad():
        objective = EditObjective(model, clip_loss, reference, config)
        e = objective.e_0.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([e], lr=config.learning_rate, weight_decay=0)
        history = []
        for iteration in range(config.iterations):
            loss, terms = objective(e)
            optimiser.zero_grad()
            (e.grad,) = torch.autograd.grad(loss, [e])  # the frozen networks never accumulate gradients
            optimiser.step()
            history.append(terms)
            report(callback, iteration + 1, config.iterations)
    _log_losses(history)
    info = {**asdict(config), "loss_start": history[0].total, "loss_end": history[-1].total}
    delta = IdentityDelta(delta=(e.detach() - objective.e_0)[0].float().cpu(), source_text=config.source_text,
                          target_text=config.target_text, info=info)
    return ClipEditResult(delta=delta, losses=tuple(history))


def _log_losses(history: Sequence[ClipEditLosses]) -> None:
    first, last = history[0], history[-1]
    logger.info("CLIP edit: loss %.4f -> %.4f (clip %.4f -> %.4f, identity %.4f -> %.4f, l1 %.4f -> %.4f)",
                first.total, last.total, first.clip, last.clip, first.identity, last.identity, first.l1, last.l1)


def save_delta(path: PathLike, delta: IdentityDelta) -> Path:
    """Write ``delta`` as ``.safetensors`` (atomically); texts and settings go in the metadata."""
    metadata = {"format": DELTA_FORMAT, "source_text": delta.source_text, "target_text": delta.target_text,
                "info": json.dumps(dict(delta.info))}
    return write_safetensors(path, {"delta": delta.delta.to(torch.float32)}, metadata)


def load_delta(path: PathLike) -> IdentityDelta:
    """Read a file written by ``save_delta``; a UserError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The identity delta {path} does not exist; create it with `python -m dva_model clip-edit`.")
    tensors, metadata = read_safetensors(path, what="identity delta")
    if metadata.get("format") != DELTA_FORMAT or "delta" not in tensors:
        raise UserError(f"{path} is not a DVA identity delta (format {metadata.get('format')!r}, "
                        f"expected {DELTA_FORMAT}).")
    try:
        info = json.loads(metadata.get("info", "{}"))
        if not isinstance(info, dict):
            raise ValueError("its info metadata is not an object")
        return IdentityDelta(delta=tensors["delta"].float(), source_text=metadata.get("source_text", ""),
                             target_text=metadata.get("target_text", ""), info=info)
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} is a damaged identity delta ({error}).") from error
