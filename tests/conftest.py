"""Shared fixtures: tiny random DVA models written in the real file formats.

Every weight is random (none left at its zero initialisation) so that a test through a loader,
the samplers or the encoders would notice a key mapped to the wrong place.
"""

import dataclasses
import enum
import sys
import types
from pathlib import Path
from typing import Literal, Optional

import pytest
import torch

import comfy_api_fake

comfy_api_fake.install()  # the nodes' V3 API (comfy_api.v0_0_2) without a ComfyUI checkout

from dva_model.formats.checkpoint import save_model  # noqa: E402
from dva_model.formats.release_keys import release_state_from_model  # noqa: E402
from dva_model.model import DVAConfig, DVAModel
from dva_model.testing import randomize_, tiny_crop_unet_config

TINY_IMAGE_SIZE = 256  # the encoders crop fixed pixel rows of a 256 crop, so the UNet works at 256 too


def tiny_dva_config() -> DVAConfig:
    """The released UNet structure at toy width, at the released crop size (``tiny_crop_unet_config``)."""
    return DVAConfig(unet=tiny_crop_unet_config(TINY_IMAGE_SIZE))


def make_tiny_model(seed: int, config: Optional[DVAConfig] = None) -> DVAModel:
    """A tiny-UNet, full-encoder DVAModel with every parameter and buffer random."""
    torch.manual_seed(seed)
    model = DVAModel(config=config or tiny_dva_config())
    randomize_(model, seed=seed)
    return model.eval().requires_grad_(False)


def _release_conf_class():
    """A stand-in for the authors' ``config.TrainConfig`` so the pickle names their class."""
    module = types.ModuleType("config")

    class ModelName(enum.Enum):
        beatgans_autoenc = "beatgans_autoenc"

    @dataclasses.dataclass
    class TrainConfig:
        img_size: int
        net_ch: int
        net_ch_mult: tuple
        net_attn: tuple
        net_num_res_blocks: int
        net_beatgans_embed_channels: int = 512
        net_beatgans_attn_head: int = 1
        dropout: float = 0.1
        model_name: ModelName = ModelName.beatgans_autoenc

    for cls in (ModelName, TrainConfig):
        cls.__module__, cls.__qualname__ = "config", cls.__name__
        setattr(module, cls.__name__, cls)
    return module, TrainConfig


HParams = Literal["jsonable", "object", "none"]


def write_release_checkpoint(path: Path, ema: DVAModel, trained: DVAModel, *, hparams: HParams = "jsonable") -> Path:
    """Write ``ema``/``trained`` in the layout of the released Lightning checkpoint.

    hparams: "jsonable" as the release saves them (``conf.as_dict_jsonable()``, a plain dict), "object"
    as a pickled ``config.TrainConfig`` (a class the loader must not import), or "none".
    """
    state = {f"ema_model.{k}": v for k, v in release_state_from_model(ema).items()}
    state.update({f"model.{k}": v for k, v in release_state_from_model(trained).items()})
    checkpoint = {
        "epoch": 51, "global_step": 1_000_000, "pytorch-lightning_version": "1.6.5",
        "state_dict": state, "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [], "callbacks": {},
    }
    module, train_config = _release_conf_class()
    unet = ema.config.unet
    conf = train_config(
        img_size=unet.image_size, net_ch=unet.model_channels, net_ch_mult=tuple(unet.channel_mult),
        net_attn=tuple(unet.attention_resolutions), net_num_res_blocks=unet.num_res_blocks, dropout=unet.dropout)
    if hparams == "jsonable":
        jsonable = dataclasses.asdict(conf)
        jsonable.pop("model_name")  # as_dict_jsonable() drops what JSON cannot hold
        checkpoint["hyper_parameters"] = jsonable
        checkpoint["hparams_name"] = None
    elif hparams == "object":
        checkpoint["hyper_parameters"] = {"conf": conf}
    sys.modules["config"] = module
    try:
        torch.save(checkpoint, path)
    finally:
        del sys.modules["config"]  # the loader must cope without the authors' code
    return path


@pytest.fixture
def comfy_host(tmp_path, monkeypatch):
    """A fake ComfyUI around the nodes (tests/comfy_fakes.py): folders under tmp_path, recorded
    progress bars and model loads."""
    from comfy_fakes import install_fake_host

    host = install_fake_host(tmp_path, monkeypatch)
    from nodes import _host

    _host.clear_model_cache()
    _host.register_model_folder()
    yield host
    _host.clear_model_cache()


@pytest.fixture(scope="session")
def tiny_model() -> DVAModel:
    return make_tiny_model(seed=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """A released-layout Lightning checkpoint: ema_model.* = ``tiny_model``, model.* different."""
    path = tmp_path_factory.mktemp("release") / "epoch=51-step=1000000.ckpt"
    return write_release_checkpoint(path, tiny_model, make_tiny_model(seed=2))


@pytest.fixture(scope="session")
def tiny_safetensors(tmp_path_factory, tiny_model) -> Path:
    """``tiny_model`` in our own .safetensors format."""
    return save_model(tmp_path_factory.mktemp("ours") / "dva_tiny.safetensors", tiny_model)
