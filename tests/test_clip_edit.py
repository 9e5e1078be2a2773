"""The published CLIP-guided identity edit with a tiny random open_clip model and a tiny random DVA.

Nothing is downloaded: CLIP is built with random weights (open_clip's ``CLIP`` class, pretrained=None
equivalent) and saved in the real file formats the loader reads.
"""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402

from dva_model.edit import clip_loss as clip_loss_module  # noqa: E402
from dva_model.formats import clip_weights  # noqa: E402
from dva_model.nets.bisenet import foreground_mask  # noqa: E402
from dva_model.edit.classifier import AttributeClassifier, edit_identity  # noqa: E402
from dva_model.edit.clip_edit import (  # noqa: E402
    ClipEditConfig, EditObjective, ReferenceFrame, load_delta, optimise_delta, reconstruction_trajectory,
    reference_from_crops, reference_from_latent, save_delta,
)
from dva_model.edit.identity import (  # noqa: E402
    AttributeEdit, DeltaEdit, IdentityDelta, apply_delta, compose_identity_edits, identity_edits,
)
from dva_model.edit.clip_loss import (  # noqa: E402
    IMAGENET_TEMPLATES, ClipDirectionalLoss, build_clip, clip_loss_for, load_clip, log_directional_loss,
)
from dva_model.constants import ID_DIM, LANDMARK_DIM, TRAINING_MASK_EXCLUDED  # noqa: E402
from dva_model.errors import ModelFileError, UserError  # noqa: E402
from dva_model.formats.latent_io import Latent  # noqa: E402
from dva_model.model import DVAConfig, DVAModel  # noqa: E402
from dva_model.progress import Cancelled  # noqa: E402
from dva_model.testing import randomize_, single_thread, tiny_unet_config  # noqa: E402

CLIP_IMAGE_SIZE = 64
SMALL_SIZE = tiny_unet_config().image_size  # 32: the optimisation loop needs only the UNet and z_face


def tiny_clip(seed: int = 0) -> CLIP:
    """A random CLIP ViT with OpenAI's text vocabulary (so open_clip's real tokenizer fits)."""
    torch.manual_seed(seed)
    model = CLIP(32, vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=CLIP_IMAGE_SIZE),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                 quick_gelu=True)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def clip_loss() -> ClipDirectionalLoss:
    return clip_loss_for(tiny_clip())


@pytest.fixture(scope="module")
def small_model() -> DVAModel:
    """A 32x32 random DVA UNet (+ z_face layer); the loop never calls the 256-pixel encoders."""
    model = DVAModel(config=DVAConfig(unet=tiny_unet_config()))
    randomize_(model, seed=3)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def reference() -> ReferenceFrame:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1
    crop = F.interpolate(coarse, size=SMALL_SIZE, mode="bilinear", align_corners=False)  # a smooth image
    mask = torch.zeros(1, 1, SMALL_SIZE, SMALL_SIZE)
    mask[..., 6:26, 8:24] = 1
    z_id = F.normalize(torch.randn(ID_DIM, generator=generator), dim=0)
    return ReferenceFrame(crop=crop, z_id=z_id, z_lnd=torch.rand(LANDMARK_DIM, generator=generator), mask=mask)


def test_text_direction_is_the_unit_template_average(clip_loss):
    seen = []

    def recording_tokenizer(texts):
        seen.append(list(texts))
        return clip_loss.tokenizer(texts)

    recording = ClipDirectionalLoss(clip_loss.clip, recording_tokenizer, image_size=CLIP_IMAGE_SIZE)
    direction = recording.text_direction("face", "face with beard")
    assert len(IMAGENET_TEMPLATES) == 79 and len(set(IMAGENET_TEMPLATES)) == 79
    assert [len(batch) for batch in seen] == [79, 79]
    assert seen[0][0] == "a bad photo of a face with beard." and seen[1][0] == "a bad photo of a face."
    assert direction.shape == (1, 32) and torch.allclose(direction.norm(), torch.tensor(1.0))
    assert torch.allclose(recording.text_direction("face with beard", "face"), -direction, atol=1e-6)


def test_preprocessing_matches_the_released_torchvision_pipeline(clip_loss):
    from torchvision import transforms

    images = torch.rand(2, 3, 40, 56) * 2 - 1  # not square: resize the short side, then centre crop
    released = transforms.Compose([
        transforms.Normalize(mean=[-1.0] * 3, std=[2.0] * 3),
        transforms.Resize(CLIP_IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC, antialias=False),
        transforms.CenterCrop(CLIP_IMAGE_SIZE),
        transforms.Normalize(clip_loss_module.CLIP_MEAN, clip_loss_module.CLIP_STD),
    ])
    torch.testing.assert_close(clip_loss.preprocess(images), released(images), atol=1e-5, rtol=1e-5)


def test_directional_loss_values(clip_loss):
    text = F.normalize(torch.randn(1, 32), dim=1)
    source = F.normalize(torch.randn(3, 32), dim=1)
    along = source + 0.1 * text  # image change exactly along the text direction
    against = source - 0.1 * text
    assert clip_loss(source, along, text).item() == pytest.approx(0.0, abs=1e-5)
    assert clip_loss(source, against, text).item() == pytest.approx(2.0, abs=1e-5)
    # No change at all: the release falls back to 1 - cos(target, text).
    expected = (1 - F.cosine_similarity(source, text, dim=1)).mean()
    assert clip_loss(source, source.clone(), text).item() == pytest.approx(expected.item(), abs=1e-6)
    assert log_directional_loss(torch.tensor(0.0)).item() == pytest.approx(0.0)
    assert log_directional_loss(torch.tensor(1.0)).item() == pytest.approx(math.log(2))


def test_trajectory_is_inversion_then_stepwise_reconstruction(small_model, reference):
    trajectory = reconstruction_trajectory(small_model, reference, steps=5)
    assert trajectory.shape == (6, 3, SMALL_SIZE, SMALL_SIZE)
    from dva_model.diffusion import ddim_invert
    from dva_model.diffusion import ddim_sample
    from dva_model.model import unet_eps
    from dva_model.diffusion.schedule import respaced_timesteps

    z_face = small_model.face_condition(reference.z_id[None], reference.z_lnd[None])
    eps, steps = unet_eps(small_model.unet), respaced_timesteps(5)
    assert steps == [0, 200, 400, 600, 800]
    x_800 = ddim_invert.invert(eps, reference.crop, steps, cond=z_face, alpha_bar=small_model.alpha_bar)
    final = ddim_sample.sample(eps, x_800, steps, cond=z_face, alpha_bar=small_model.alpha_bar)
    torch.testing.assert_close(trajectory[0], x_800[0])
    torch.testing.assert_close(trajectory[-1], final[0])


def test_optimisation_lowers_the_loss_with_one_unet_call_per_iteration(small_model, clip_loss, reference):
    config = ClipEditConfig(source_text="face", target_text="face with beard", iterations=12)
    calls, progress = [], []
    hook = small_model.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        result = optimise_delta(small_model, clip_loss, reference, config=config,
                                callback=lambda done, total: progress.append((done, total)))
    finally:
        hook.remove()
    assert calls == [1] * 4 + [1] * 5 + [5] * 12  # inversion, reconstruction, then the batched trajectory
    assert progress == [(i, 12) for i in range(1, 13)]
    totals = [terms.total for terms in result.losses]
    assert len(totals) == 12 and all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < totals[0]
    assert result.losses[0].identity == pytest.approx(0.0, abs=1e-6)  # e starts at the reference identity
    assert result.losses[-1].clip < math.log(2)  # image change better aligned than an unrelated direction
    assert result.delta.delta.shape == (ID_DIM,) and result.delta.delta.norm() > 0
    assert result.delta.info["iterations"] == 12 and result.delta.target_text == "face with beard"
    assert all(not p.requires_grad and p.grad is None for p in small_model.parameters())

    # The learnt delta beats random deltas of the same length on the CLIP term.
    objective = EditObjective(small_model, clip_loss, reference, config)
    e_0 = reference.z_id[None]
    with torch.no_grad():
        learnt = objective(e_0 + result.delta.delta[None])[1].clip
        generator = torch.Generator().manual_seed(5)
        length = result.delta.delta.norm()
        random = [objective(e_0 + length * F.normalize(torch.randn(1, ID_DIM, generator=generator)))[1].clip
                  for _ in range(4)]
    assert learnt < min(random)


def test_runs_under_inference_mode_as_comfyui_runs_nodes(clip_loss, reference):
    """ComfyUI executes nodes (and moves models) under torch.inference_mode: the edit must still get its
    gradients, and give the same delta as outside it."""
    config = ClipEditConfig(source_text="face", target_text="face with beard", iterations=2)
    with torch.inference_mode():
        model = DVAModel(config=DVAConfig(unet=tiny_unet_config()))
        randomize_(model, seed=3).eval().requires_grad_(False)
        inference_clip = clip_loss_for(tiny_clip())
        inference_reference = ReferenceFrame(crop=reference.crop.clone(), z_id=reference.z_id.clone(),
                                             z_lnd=reference.z_lnd.clone(), mask=reference.mask.clone())
        assert next(model.unet.parameters()).is_inference()
        inside = optimise_delta(model, inference_clip, inference_reference, config=config)
    outside = optimise_delta(model, inference_clip, reference, config=config)
    torch.testing.assert_close(inside.delta.delta, outside.delta.delta)
    assert inside.delta.delta.norm() > 0


def test_cancel_stops_the_loop(small_model, clip_loss, reference):
    config = ClipEditConfig(source_text="face", target_text="face with glasses", iterations=50)
    seen = []

    def cancel_at_two(done, total):
        seen.append(done)
        if done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        optimise_delta(small_model, clip_loss, reference, config=config, callback=cancel_at_two)
    assert seen == [1, 2]


def test_apply_delta_is_the_published_formula():
    generator = torch.Generator().manual_seed(1)
    z_id = 0.9 * F.normalize(torch.randn(ID_DIM, generator=generator), dim=0)  # a mean identity, not unit
    delta = 0.3 * torch.randn(ID_DIM, generator=generator)
    published = (z_id + 0.5 * delta) / (z_id + 0.5 * delta).norm()
    torch.testing.assert_close(apply_delta(z_id, delta, scale=0.5, norm="unit"), published)
    torch.testing.assert_close(apply_delta(z_id, IdentityDelta(delta=delta), scale=0.5), published * 0.9)
    assert torch.equal(apply_delta(z_id, delta, scale=0.0), z_id)
    assert apply_delta(z_id, delta, scale=0.0, norm="unit").norm().item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        apply_delta(z_id, delta[:10])


def test_saved_delta_reloads_to_the_same_edit(tmp_path):
    delta = IdentityDelta(delta=torch.randn(ID_DIM), source_text="face", target_text="face with beard",
                          info={"iterations": 2000, "loss_end": 1.25})
    path = save_delta(tmp_path / "beard.safetensors", delta)
    loaded = load_delta(path)
    assert torch.equal(loaded.delta, delta.delta)
    assert (loaded.source_text, loaded.target_text, dict(loaded.info)) == ("face", "face with beard", dict(delta.info))
    z_id = 0.95 * F.normalize(torch.randn(ID_DIM), dim=0)
    assert torch.equal(apply_delta(z_id, loaded, scale=0.5), apply_delta(z_id, delta, scale=0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["beard.safetensors"]  # no partial files left behind
    with pytest.raises(UserError):
        load_delta(tmp_path / "missing.safetensors")
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError):
        load_delta(tmp_path / "other.safetensors")


def test_clip_delta_then_attribute_edit():
    generator = torch.Generator().manual_seed(2)
    classifier = AttributeClassifier(weight=torch.randn(2, ID_DIM, generator=generator),
                                     mean=0.01 * torch.randn(ID_DIM, generator=generator),
                                     std=0.05 + 0.01 * torch.rand(ID_DIM, generator=generator),
                                     attribute_names=("Smiling", "Young"))
    z_id = 0.9 * F.normalize(torch.randn(ID_DIM, generator=generator), dim=0)
    delta = 0.2 * torch.randn(ID_DIM, generator=generator)
    edits = identity_edits(deltas=[(delta, 0.5)], classifier=classifier, attributes=[("Young", 0.3)], norm="unit")
    combined = compose_identity_edits(z_id, edits)
    expected = edit_identity(apply_delta(z_id, delta, scale=0.5, norm="unit"), classifier, [("Young", 0.3)],
                             norm="unit")
    torch.testing.assert_close(combined, expected)
    # The delta acts first wherever it stands in the sequence; attribute edits on one classifier and norm
    # are summed in one published edit (chaining equals editing together).
    reordered = (AttributeEdit(classifier=classifier, attribute="Young", scale=0.1, norm="unit"),
                 DeltaEdit(delta=delta, scale=0.5, norm="unit"),
                 AttributeEdit(classifier=classifier, attribute="Young", scale=0.2, norm="unit"))
    torch.testing.assert_close(compose_identity_edits(z_id, reordered), expected)
    assert torch.equal(compose_identity_edits(z_id, ()), z_id)
    with pytest.raises(UserError, match="need an attribute classifier.*--classifier"):
        identity_edits(attributes=[("Young", 0.3)])


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError):
        ClipEditConfig(source_text="", target_text="face with beard")
    with pytest.raises(ValueError):
        ClipEditConfig(source_text="face", target_text="beard", iterations=0)
    with pytest.raises(ValueError):
        ClipEditConfig(source_text="face", target_text="beard", learning_rate=0.0)
    with pytest.raises(ValueError):
        ClipEditConfig(source_text="face", target_text="beard", trajectory_steps=37)
    defaults = ClipEditConfig(source_text="face", target_text="face with beard")
    assert (defaults.iterations, defaults.learning_rate, defaults.clip_weight, defaults.identity_weight,
            defaults.l1_weight, defaults.trajectory_steps) == (2000, 0.002, 3.0, 1.0, 5.0, 5)


def test_reference_frames_from_crops_and_latent(tiny_model):
    crops = torch.rand(2, 3, 256, 256) * 2 - 1
    reference = reference_from_crops(tiny_model, crops, index=1)
    z_id, z_lnd = tiny_model.encode_features(crops[1:])
    torch.testing.assert_close(reference.z_id, z_id[0])
    torch.testing.assert_close(reference.z_lnd, z_lnd[0])
    assert torch.equal(reference.mask, foreground_mask(tiny_model.parse(crops[1:]), TRAINING_MASK_EXCLUDED))
    assert torch.equal(reference.crop, crops[1:])

    latent = Latent(z_id=torch.cat([z_id, z_id]), z_lnd=torch.cat([z_lnd, z_lnd]), x_T=crops, identity=z_id[0],
                    steps=2)
    from_latent = reference_from_latent(tiny_model, latent, index=-1)
    decoded = tiny_model.decode(crops[1:], z_id[0], z_lnd, steps=2)
    torch.testing.assert_close(from_latent.crop, decoded)
    assert torch.equal(from_latent.z_id, z_id[0])
    with pytest.raises(UserError):
        reference_from_crops(tiny_model, crops, index=2)


def test_load_clip_reads_every_supported_file_and_never_downloads(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model = tiny_clip(seed=1)
    state = model.state_dict()
    traced = torch.jit.trace_module(model, {"encode_image": (torch.zeros(1, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE),)},
                                    check_trace=False)
    traced.save(str(tmp_path / "ViT-B-16.pt"))  # a TorchScript archive, like OpenAI's file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "open_clip_model.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "trained.bin")
    for name in ("ViT-B-16.pt", "open_clip_model.safetensors", "trained.bin"):
        loaded = load_clip(tmp_path / name).state_dict()
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), name

    monkeypatch.setattr(clip_weights, "OPENAI_CACHE_FILE", tmp_path / "cache" / "ViT-B-16.pt")
    monkeypatch.setattr(clip_weights, "HF_CACHE_REPO", "nobody/no-such-clip")
    with pytest.raises(ModelFileError, match="dva_model download --what clip"):
        load_clip()
    (tmp_path / "cache").mkdir()
    (tmp_path / "ViT-B-16.pt").rename(tmp_path / "cache" / "ViT-B-16.pt")
    assert clip_weights.find_cached_clip_weights() == tmp_path / "cache" / "ViT-B-16.pt"
    with pytest.raises(ModelFileError):
        build_clip({"visual.conv1.weight": torch.zeros(1)})


def test_clip_edit_command_from_a_latent(tmp_path, small_model, monkeypatch):
    """`python -m dva_model clip-edit --latent ...`: the delta file, and crops decoded with it."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from dva_model.cli import main as cli
    from dva_model.formats.checkpoint import save_model
    from dva_model.formats.latent_io import save_latent

    monkeypatch.setattr(cli, "COMMANDS", tuple(dict.fromkeys(cli.COMMANDS + ("clip_edit",))))
    checkpoint = save_model(tmp_path / "small.safetensors", small_model)
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip(seed=2).state_dict().items()}, str(weights))
    generator = torch.Generator().manual_seed(4)
    z_id = F.normalize(torch.randn(2, ID_DIM, generator=generator), dim=1)
    latent = Latent(z_id=z_id, z_lnd=torch.rand(2, LANDMARK_DIM, generator=generator),
                    x_T=torch.randn(2, 3, SMALL_SIZE, SMALL_SIZE, generator=generator), identity=z_id.mean(0),
                    steps=2, frame_names=("a", "b"))
    save_latent(tmp_path / "latent.safetensors", latent)
    out, crops = tmp_path / "beard.safetensors", tmp_path / "edited"
    common = ["--quiet", "clip-edit", "--checkpoint", str(checkpoint), "--latent", str(tmp_path / "latent.safetensors"),
              "--source", "face", "--out", str(out), "--device", "cpu"]
    status = cli.main(common + ["--target", "face with beard", "--clip-weights", str(weights), "--iterations", "3",
                                "--reference-frame", "1", "--decode-out", str(crops), "--edit-norm", "unit"])
    assert status == 0
    delta = load_delta(out)
    assert delta.info["iterations"] == 3 and delta.target_text == "face with beard" and delta.delta.norm() > 0
    expected = small_model.decode(latent.x_T, apply_delta(latent.identity, delta, scale=0.5, norm="unit"),
                                  latent.z_lnd, steps=2)
    written = np.stack([np.asarray(Image.open(crops / f"{name}.png")) for name in ("a", "b")]).astype(np.float32)
    expected_pixels = ((expected + 1) / 2 * 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(written - expected_pixels).max() <= 1.0
    # A missing CLIP file is one sentence and exit status 2.
    assert cli.main(common + ["--target", "beard", "--clip-weights", str(tmp_path / "absent.pt")]) == 2
