"""The CLIP-edit nodes as ComfyUI calls them (fake host from test_nodes): progress, cancel, delta files."""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_clip_edit import tiny_clip  # noqa: E402
from comfy_fakes import InterruptProcessingException, combo_options, install, model_handle as _handle  # noqa: E402

from dva_model.edit.classifier import AttributeClassifier, edit_identity  # noqa: E402
from dva_model.edit.clip_edit import IdentityDelta, apply_delta  # noqa: E402
from dva_model.constants import ID_DIM, LANDMARK_DIM  # noqa: E402
from dva_model.formats.latent_io import Latent  # noqa: E402
from dva_model.testing import randomize_, single_thread, tiny_unet_config  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def small_model():
    from dva_model.model import DVAConfig, DVAModel

    model = DVAModel(config=DVAConfig(unet=tiny_unet_config()))
    return randomize_(model, seed=3).eval().requires_grad_(False)


def _latent(model, model_id):
    generator = torch.Generator().manual_seed(0)
    z_id = F.normalize(torch.randn(2, ID_DIM, generator=generator), dim=1)
    return Latent(z_id=z_id, z_lnd=torch.rand(2, LANDMARK_DIM, generator=generator),
                  x_T=torch.randn(2, 3, model.image_size, model.image_size, generator=generator),
                  identity=z_id.mean(0), steps=2, model_id=model_id)


def _clip_handle(comfy_host, tmp_path):
    from safetensors.torch import save_file

    from nodes.clip_edit import DVACLIPLoader

    weights = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip(seed=4).state_dict().items()}, str(weights))
    name = install(weights, comfy_host.models / "dva", "clip/tiny_clip.safetensors")
    assert name in combo_options(DVACLIPLoader, "weights")
    with torch.inference_mode():  # as ComfyUI runs every node
        (handle,) = DVACLIPLoader.execute(name, "cpu")
        (again,) = DVACLIPLoader.execute(name, "cpu")
    assert again is handle, "one resident CLIP per file and device"
    return handle


EDIT_SETTINGS = dict(source_text="face", target_text="face with beard", reference_frame=1, learning_rate=0.002,
                     clip_weight=3.0, identity_weight=1.0, l1_weight=5.0)


def test_clip_edit_node_learns_a_delta_with_progress_and_the_apply_node_scales_it(comfy_host, small_model, tmp_path):
    from nodes.clip_edit import DVAApplyIdentityDelta, DVACLIPEdit
    from nodes.types import Identity

    model, clip = _handle(small_model), _clip_handle(comfy_host, tmp_path)
    latent = _latent(small_model, model.model_id)
    identity = Identity(base=latent.identity)
    with torch.inference_mode():
        (delta,) = DVACLIPEdit.execute(model, clip, latent, iterations=4, **EDIT_SETTINGS)
        (edited,) = DVAApplyIdentityDelta.execute(identity, delta, 0.5, "unit (as released)")
    assert isinstance(delta, IdentityDelta) and delta.delta.norm() > 0 and delta.info["iterations"] == 4
    assert math.isfinite(delta.info["loss_end"])
    torch.testing.assert_close(edited.base, apply_delta(latent.identity, delta, scale=0.5, norm="unit"))
    assert edited.edits == identity.edits
    # One bar for the reference frame's decode (2 UNet calls), one moved on every iteration.
    assert [(total, values) for total, values in comfy_host.bars] == [(2, [1, 2]), (4, [1, 2, 3, 4])]
    assert any(load["models"] == [clip.patcher] for load in comfy_host.loads)


def test_clip_edit_node_cancels_within_one_iteration(comfy_host, small_model, tmp_path):
    from nodes.clip_edit import DVACLIPEdit
    from nodes.types import Identity

    model, clip = _handle(small_model), _clip_handle(comfy_host, tmp_path)
    latent = _latent(small_model, model.model_id)
    comfy_host.interrupt_after = 2 + 3  # the reference decode's 2 checks, then 3 iterations
    with pytest.raises(InterruptProcessingException), torch.inference_mode():
        DVACLIPEdit.execute(model, clip, latent, iterations=500, **EDIT_SETTINGS)
    assert comfy_host.bars[-1] == (500, [1, 2, 3])


def test_delta_nodes_save_load_and_apply_before_attribute_edits(comfy_host):
    from nodes.clip_edit import DVAApplyIdentityDelta, DVALoadIdentityDelta, DVASaveIdentityDelta
    from nodes.types import AttributeEditStep, Identity

    generator = torch.Generator().manual_seed(6)
    delta = IdentityDelta(delta=0.2 * torch.randn(ID_DIM, generator=generator), source_text="face",
                          target_text="face with glasses", info={"loss_start": 2.5, "loss_end": 1.25})
    saved = DVASaveIdentityDelta.execute(delta, "dva/clip_delta")
    (entry,) = saved.ui["files"]
    assert saved.ui["text"] == ["'face' -> 'face with glasses': loss 2.5000 -> 1.2500"]
    listed = f"{entry['subfolder']}/{entry['filename']} [output]"
    assert listed in combo_options(DVALoadIdentityDelta, "delta_file")
    (loaded,) = DVALoadIdentityDelta.execute(listed)
    assert torch.equal(loaded.delta, delta.delta) and loaded.target_text == "face with glasses"

    classifier = AttributeClassifier(weight=torch.randn(2, ID_DIM, generator=generator),
                                     mean=0.01 * torch.randn(ID_DIM, generator=generator),
                                     std=0.05 + 0.01 * torch.rand(ID_DIM, generator=generator),
                                     attribute_names=("Smiling", "Young"))
    base = 0.9 * F.normalize(torch.randn(ID_DIM, generator=generator), dim=0)
    identity = Identity(base=base).with_edit(AttributeEditStep(classifier=classifier, attribute="Young", scale=0.3,
                                                               norm="keep"))
    (edited,) = DVAApplyIdentityDelta.execute(identity, loaded, 0.5, "keep (exact at 0)")
    expected = edit_identity(apply_delta(base, delta, scale=0.5), classifier, [("Young", 0.3)])
    torch.testing.assert_close(edited.edited(), expected)
    (unchanged,) = DVAApplyIdentityDelta.execute(identity, loaded, 0.0, "keep (exact at 0)")
    assert torch.equal(unchanged.base, base)


def test_clip_loader_without_weights_is_one_sentence(comfy_host, monkeypatch):
    from dva_model.edit import clip_loss
    from nodes.clip_edit import CACHED_WEIGHTS, DVACLIPLoader

    monkeypatch.setattr(clip_loss, "find_cached_clip_weights", lambda: None)
    with pytest.raises(FileNotFoundError, match="models/dva"):
        DVACLIPLoader.execute(CACHED_WEIGHTS, "cpu")
