"""CLIP directional loss of the published text-driven edit (reference section 7.2; StyleGAN-NADA's form).

Legend (all CLIP features l2-normalised):
    E_img, E_txt  CLIP ViT-B/16 image / text encoders (OpenAI weights, QuickGELU)
    d_text        normalise(mean over templates of E_txt(template(target)) - E_txt(template(source)))
    d_img_i       (E_img(target_i) - E_img(source_i)) / (|E_img(target_i) - E_img(source_i)| + 1e-7)
    L_dir         mean_i (1 - cos(d_img_i, d_text))
If every d_img_i is exactly zero the release falls back to mean_i (1 - cos(E_img(target_i), d_text)).
The edit (``clip_edit``) minimises -log((2 - L_dir) / 2), i.e. -log of the mean of (1 + cos_i) / 2.

Images go in as the library's [B, 3, H, W] in [-1, 1] and are preprocessed as released: to [0, 1],
bicubic resize of the short side to the CLIP input size (no antialiasing: the release's torchvision 0.13
did not antialias tensors), centre crop, CLIP mean/std. ``open_clip`` is imported only where weights
are read or a model is built, so the rest of the library works without it.
"""

import logging
import re
from pathlib import Path
from typing import Callable, Dict, Final, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dva_model.errors import ModelFileError
from dva_model.formats.clip_weights import (
    HF_CACHE_REPO, OPENAI_CACHE_FILE, download_clip_weights, find_cached_clip_weights, read_clip_state,
)

logger = logging.getLogger(__name__)

# The 79 ImageNet prompt templates the release averages the text direction over.
IMAGENET_TEMPLATES: Final = (
    "a bad photo of a {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image normalisation
CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)
RESIZE_ANTIALIAS: Final = False  # as released (torchvision 0.13 tensor resize)
EDIT_DIRECTION_EPS: Final = 1e-7  # added to |d_img| before dividing, as released
COSINE_EPS: Final = 1e-8  # torch.nn.CosineSimilarity's default, which the release uses

RELEASE_PATCH_SIZE: Final = 16
RELEASE_VISION_WIDTH: Final = 768
HEAD_WIDTH: Final = 64  # CLIP attention head width: heads = width // 64 in both towers
# Entries some exports carry beside the weights: OpenAI's archive stores three ints, traced open_clip
# models the causal mask (a non-persistent buffer of open_clip's CLIP).
_NON_WEIGHT_KEYS: Final = ("input_resolution", "context_length", "vocab_size", "attn_mask")

Tokenizer = Callable[[Sequence[str]], Tensor]  # texts -> [N, context_length] int64 token ids
PathLike = Union[str, Path]


class ClipDirectionalLoss(nn.Module):
    """The release's CLIP directional loss around any CLIP model with ``encode_image`` / ``encode_text``.

    clip_model: e.g. ``open_clip.model.CLIP`` (frozen by the caller); tokenizer: texts -> token ids;
    image_size: the CLIP input size (224 for ViT-B/16).
    """

    def __init__(self, clip_model: nn.Module, tokenizer: Tokenizer, *, image_size: int):
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def _clip_dtype(self) -> torch.dtype:
        return next(self.clip.parameters()).dtype

    @torch.no_grad()
    def text_direction(self, source_text: str, target_text: str,
                       templates: Sequence[str] = IMAGENET_TEMPLATES) -> Tensor:
        """d_text [1, D] float32 unit: the template-averaged difference of target and source text features."""
        for name, text in (("source_text", source_text), ("target_text", target_text)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{name} must be a non-empty description such as 'face', got {text!r}.")
        difference = self._text_features(target_text, templates) - self._text_features(source_text, templates)
        direction = difference.mean(dim=0, keepdim=True)  # [T, D] -> [1, D]
        return direction / direction.norm(dim=-1, keepdim=True)

    def _text_features(self, text: str, templates: Sequence[str]) -> Tensor:
        tokens = self.tokenizer([template.format(text) for template in templates]).to(self.mean.device)
        features = self.clip.encode_text(tokens).float()  # [T, D]
        return features / features.norm(dim=-1, keepdim=True)

    def preprocess(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] float in [-1, 1] -> CLIP input [B, 3, S, S] (resize short side, centre crop)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}.")
        x = (images.float() + 1) / 2
        height, width = x.shape[-2:]
        size = self.image_size
        # torchvision Resize(int): the short side becomes `size`, the long side int(size * long / short).
        if height <= width:
            new_size = (size, int(size * width / height))
        else:
            new_size = (int(size * height / width), size)
        x = F.interpolate(x, size=new_size, mode="bicubic", align_corners=False, antialias=RESIZE_ANTIALIAS)
        top = int(round((new_size[0] - size) / 2.0))
        left = int(round((new_size[1] - size) / 2.0))
        x = x[:, :, top:top + size, left:left + size]
        return (x - self.mean) / self.std

    def image_features(self, images: Tensor) -> Tensor:
        """E_img: images [B, 3, H, W] in [-1, 1] -> [B, D] float32 unit features on the CLIP model's device
        (autograd follows the caller)."""
        x = self.preprocess(images.to(self.mean.device))
        features = self.clip.encode_image(x.to(self._clip_dtype())).float()
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, source_features: Tensor, target_features: Tensor, text_direction: Tensor) -> Tensor:
        """L_dir (module docstring): features [B, D] unit, text_direction [1, D] unit -> scalar in [0, 2]."""
        edit = target_features - source_features
        edit = edit / (edit.norm(dim=-1, keepdim=True) + EDIT_DIRECTION_EPS)
        if torch.all(edit == 0):  # the release's fallback when the images have not changed at all
            edit = target_features
        return (1 - F.cosine_similarity(edit, text_direction, dim=-1, eps=COSINE_EPS)).mean()


def log_directional_loss(directional_loss: Tensor) -> Tensor:
    """The release's CLIP term: -log((2 - L_dir) / 2), from 0 (aligned) to +inf (opposite)."""
    return -torch.log((2 - directional_loss) / 2)


def _count_blocks(state: Dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({match.group(1) for key in state for match in [pattern.match(key)] if match})


def build_clip(state: Dict[str, Tensor]) -> nn.Module:
    """An ``open_clip`` CLIP ViT (QuickGELU, as OpenAI trained it) shaped after ``state`` and loaded strictly.

    Returns the model in float32 on the CPU, in eval mode with every weight frozen.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    required = ("visual.proj", "visual.conv1.weight", "visual.positional_embedding", "text_projection",
                "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise ModelFileError(f"Not the weights of a CLIP ViT (missing {', '.join(missing)}); "
                             "pass OpenAI's ViT-B-16.pt.")
    state = {key: value for key, value in state.items() if key not in _NON_WEIGHT_KEYS}
    vision_width, _, patch_size, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    vision = CLIPVisionCfg(layers=_count_blocks(state, "visual.transformer.resblocks."), width=vision_width,
                           patch_size=patch_size, image_size=patch_size * grid)
    text = CLIPTextCfg(context_length=state["positional_embedding"].shape[0],
                       vocab_size=state["token_embedding.weight"].shape[0], width=text_width,
                       heads=max(1, text_width // HEAD_WIDTH), layers=_count_blocks(state, "transformer.resblocks."))
    model = CLIP(state["text_projection"].shape[1], vision_cfg=vision, text_cfg=text, quick_gelu=True)
    try:
        model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"The CLIP weights do not fit a CLIP ViT of their own shape: {error}") from error
    if patch_size != RELEASE_PATCH_SIZE or vision_width != RELEASE_VISION_WIDTH:
        logger.warning("These CLIP weights are not ViT-B/16 (patch %d, width %d); the published edit used "
                       "OpenAI's ViT-B/16.", patch_size, vision_width)
    return model.eval().requires_grad_(False)


def load_clip(weights: Optional[PathLike] = None, *, device: Union[str, torch.device] = "cpu",
              allow_download: bool = False) -> nn.Module:
    """OpenAI CLIP ViT-B/16 from ``weights`` or the local caches (``find_cached_clip_weights``).

    Downloads only when ``allow_download`` is set and nothing is on disk. Returns a frozen float32
    open_clip model in eval mode on ``device``.
    """
    path = Path(weights) if weights is not None else find_cached_clip_weights()
    if path is None and allow_download:
        path = download_clip_weights()
    if path is None:
        raise ModelFileError(
            f"No CLIP weights given and none cached ({OPENAI_CACHE_FILE} or the Hugging Face cache of "
            f"{HF_CACHE_REPO}); pass the OpenAI ViT-B-16.pt file, or fetch it with "
            "`python -m dva_model download --what clip`."
        )
    try:
        model = build_clip(read_clip_state(path))
    except ModelFileError as error:
        if str(path) in str(error):
            raise
        raise ModelFileError(f"{path}: {error}") from error
    return model.to(device)


def clip_loss_for(clip_model: nn.Module) -> ClipDirectionalLoss:
    """Wrap an open_clip CLIP model with its tokenizer and input size into the directional loss."""
    import functools

    import open_clip

    image_size = clip_model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    tokenizer = functools.partial(open_clip.tokenize, context_length=clip_model.context_length)
    device = next(clip_model.parameters()).device
    return ClipDirectionalLoss(clip_model, tokenizer, image_size=image_size).to(device)
