"""Fixed numbers of the published Diffusion Video Autoencoder (Kim et al., CVPR 2023), and the one table
of weight precisions.

Every magic number of the method is named once here; modules import it from this file.
"""

from typing import Dict, Final, Literal

import torch

# Feature sizes (paper, section 3).
ID_DIM: Final = 512  # z_id: ArcFace IR-SE50 embedding, unit length per frame
LANDMARK_POINTS: Final = 68  # iBUG 68-point layout predicted by the landmark regressor
JAW_POINTS: Final = 17  # indices 0..16, dropped from z_lnd
LANDMARK_DIM: Final = 2 * (LANDMARK_POINTS - JAW_POINTS)  # z_lnd: 51 (x, y) points = 102
FACE_COND_DIM: Final = 512  # z_face = Linear(ID_DIM + LANDMARK_DIM -> FACE_COND_DIM)

# Diffusion (linear schedule of DDPM, epsilon prediction).
NUM_TRAIN_TIMESTEPS: Final = 1000
BETA_START: Final = 1e-4
BETA_END: Final = 0.02

# Aligned crop the released model works at.
CROP_SIZE: Final = 256

# BiSeNet face-parsing classes (zllrunning/face-parsing.PyTorch, 19 classes).
PARSING_CLASSES: Final = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eyeglasses", "l_ear", "r_ear",
    "earring", "nose", "mouth", "u_lip", "l_lip", "neck", "necklace", "cloth", "hair", "hat",
)
# Classes left OUT of the foreground masks the release uses.
TRAINING_MASK_EXCLUDED: Final = (0, 16, 18)  # background, cloth, hat
PASTE_MASK_EXCLUDED: Final = (0, 16, 18, 7, 8, 14, 17)  # ... and ears, neck, hair

# CelebA attribute names, in the order of the released classifier's 40 outputs.
CELEBA_ATTRIBUTES: Final = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)

# Weight precisions the UNet may run in, by the names every interface offers (CLI, nodes, trainer).
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: Final[Dict[str, torch.dtype]] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# The "format" metadata of the pack's own .safetensors files.
DVA_MODEL_FORMAT: Final = "dva-model/1"  # a DVAModel state dict (formats.checkpoint.save_model)
DIRECTIONS_FORMAT: Final = "dva-directions/1"  # attribute directions (edit.classifier.save_directions)
LATENT_FORMAT: Final = "dva-latent/1"  # a clip's encoding (formats.latent_io.save_latent)
DELTA_FORMAT: Final = "dva-identity-delta/1"  # a learnt CLIP edit (edit.clip_edit.save_delta)
