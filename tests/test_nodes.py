"""The ComfyUI nodes as ComfyUI calls them, with the host's modules replaced by small stand-ins.

``comfy_host`` installs fake ``folder_paths``, ``comfy.utils``, ``comfy.model_management`` and
``comfy.model_patcher`` modules (recording progress bars and model loads, and able to raise the
user's Cancel), so the nodes run here on the CPU without a ComfyUI checkout. The real server is
exercised by tests/test_comfy_server.py.
"""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import numpy as np
import torch

from comfy_fakes import InterruptProcessingException, combo_options, install, model_handle as _handle, pack_nodes

REPO = Path(__file__).resolve().parents[1]
PACK_NODES = {
    "DVAModelLoader", "DVAClassifierLoader", "DVAVideoLoad", "DVAFaceAlign", "DVAFaceTracks", "DVAPickFace",
    "DVAEncode", "DVASaveLatent",
    "DVALoadLatent", "DVAIdentityAverage", "DVAAttributeEdit", "DVADDIMDecode", "DVAPasteBack", "DVADecodePasteVideo",
    "DVACLIPLoader", "DVACLIPEdit", "DVAApplyIdentityDelta", "DVASaveIdentityDelta", "DVALoadIdentityDelta",
}
HEAVY_MODULES = ("dva_model.nets.unet", "dva_model.model", "dva_model.formats.checkpoint", "av", "dlib", "kornia", "scipy",
                 "safetensors", "open_clip")


# ------------------------------------------------------------------------------------------------
# The pack as ComfyUI loads it


def test_pack_loads_every_node_without_heavy_imports():
    # As ComfyUI loads a V3 pack: import it as a package, await comfy_entrypoint(), ask for the node list.
    code = f"""
import asyncio, importlib.util, json, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
import comfy_api_fake
comfy_api_fake.install()
spec = importlib.util.spec_from_file_location("ComfyUI-DVA", {str(REPO / '__init__.py')!r},
                                              submodule_search_locations=[{str(REPO)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["ComfyUI-DVA"] = module
spec.loader.exec_module(module)
extension = asyncio.run(module.comfy_entrypoint())
nodes = asyncio.run(extension.get_node_list())
heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
print(json.dumps({{"nodes": sorted(node.__name__ for node in nodes), "heavy": heavy,
                   "lone": hasattr(module, "NODE_CLASS_MAPPINGS")}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["nodes"] == sorted(PACK_NODES)  # each class is named as its node id
    assert not loaded["lone"], "a module registers through comfy_entrypoint (V3) or NODE_CLASS_MAPPINGS, not both"
    assert loaded["heavy"] == [], f"importing the pack loaded {loaded['heavy']}"


def test_every_node_declares_category_tooltips_ranges_and_outputs(comfy_host):
    categories = {"DVA/model", "DVA/video", "DVA/encode", "DVA/edit"}
    for node_id, node in pack_nodes().items():
        schema = node.define_schema()
        assert schema.node_id == node_id and node_id.startswith("DVA"), node_id
        assert schema.category in categories and schema.display_name.startswith("DVA "), node_id
        assert schema.description, node_id
        for item in schema.inputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
            if item.io_type in ("INT", "FLOAT"):
                assert item.options["min"] <= item.options["default"] <= item.options["max"], f"{node_id}.{item.id}"
        for output in schema.outputs:
            assert output.display_name and output.tooltip, f"{node_id} output {output.io_type}"
        assert schema.outputs or schema.is_output_node, f"{node_id} returns nothing but is no output node"
    assert {node.define_schema().category for node in pack_nodes().values()} == categories


def test_model_folder_is_registered_and_keeps_extra_paths(comfy_host, monkeypatch):
    import folder_paths
    from nodes import _host

    extra = str(comfy_host.root / "elsewhere")
    folder_paths.folder_names_and_paths["dva"] = ([extra], set())  # as extra_model_paths.yaml adds it
    _host.register_model_folder()
    paths, extensions = folder_paths.folder_names_and_paths["dva"]
    assert paths == [extra, str(comfy_host.models / "dva")]
    assert ".safetensors" in extensions and ".ckpt" in extensions


# ------------------------------------------------------------------------------------------------
# One loader, one resident model


def test_loader_caches_one_model_per_file_precision_and_device(comfy_host, tiny_safetensors):
    loader = pack_nodes()["DVAModelLoader"]
    name = install(tiny_safetensors, comfy_host.models / "dva", "tiny.safetensors")
    assert name in combo_options(loader, "checkpoint")
    with torch.inference_mode():  # as ComfyUI runs every node
        (first,) = loader.execute(name, "auto", "auto")
        (again,) = loader.execute(name, "fp32", "cpu")
        (half,) = loader.execute(name, "bf16", "cpu")
        first.acquire()
    assert not any(p.is_inference() for p in first.model.parameters()), \
        "weights loaded inside ComfyUI's inference mode must stay usable by gradient-based nodes (CLIP edit)"
    assert again is first, "the same file, precision and device must share one loaded model"
    assert half is not first and half.dtype == torch.bfloat16
    assert first.patcher.model is first.model and first.model_id.startswith("tiny.safetensors")
    assert first.acquire() is first.model
    assert comfy_host.loads[-1]["models"] == [first.patcher] and comfy_host.loads[-1]["force_full_load"]


def test_loader_dropdowns_list_only_files_of_their_kind(comfy_host, tiny_checkpoint, tiny_safetensors):
    from test_workflows import _release_classifier

    dva = comfy_host.models / "dva"
    install(tiny_checkpoint, dva, "release/epoch=51-step=1000000.ckpt")
    install(tiny_safetensors, dva, "dva.safetensors")
    _release_classifier(dva / "release_cls" / "last.ckpt")
    (dva / "latent.pkl").write_bytes(b"statistics")
    from dva_model.formats.release import CHECKPOINT, CLASSIFIER, LATENT_STATS

    nodes = pack_nodes()  # the released names are offered too (for download_if_missing), each in its own list
    assert combo_options(nodes["DVAModelLoader"], "checkpoint") == sorted(
        ["dva.safetensors", "release/epoch=51-step=1000000.ckpt", CHECKPOINT.name])
    assert combo_options(nodes["DVAClassifierLoader"], "classifier") == sorted(["release_cls/last.ckpt", CLASSIFIER.name])
    assert combo_options(nodes["DVAClassifierLoader"], "latent_stats") == ["none"] + sorted(["latent.pkl", LATENT_STATS.name])


def test_load_nodes_list_saved_files_of_their_kind_under_output_dva_only(comfy_host):
    from dva_model.edit.clip_edit import IdentityDelta, save_delta
    from dva_model.formats.latent_io import Latent, save_latent

    z_id = torch.nn.functional.normalize(torch.randn(1, 512), dim=1)
    latent = Latent(z_id=z_id, z_lnd=torch.rand(1, 102), x_T=torch.randn(1, 3, 8, 8), identity=z_id[0].clone(), steps=2,
                    model_id="m", frame_names=("frame_000000",))
    save_latent(comfy_host.output / "dva" / "latent_00001_.safetensors", latent)
    save_latent(comfy_host.output / "elsewhere" / "latent_00002_.safetensors", latent)  # not walked
    save_delta(comfy_host.output / "dva" / "clip_delta_00001_.safetensors",
               IdentityDelta(delta=torch.zeros(512), source_text="a", target_text="b", info={}))
    nodes = pack_nodes()
    assert combo_options(nodes["DVALoadLatent"], "latent_file") == ["dva/latent_00001_.safetensors [output]"]
    assert combo_options(nodes["DVALoadIdentityDelta"], "delta_file") == ["dva/clip_delta_00001_.safetensors [output]"]


def test_missing_model_file_is_one_sentence_naming_the_folder(comfy_host):
    with pytest.raises(FileNotFoundError, match=r"not in ComfyUI's models/dva folder .*put it there"):
        pack_nodes()["DVAModelLoader"].execute("absent.safetensors", "auto", "auto")


# ------------------------------------------------------------------------------------------------
# Progress and cancel on every UNet call


@pytest.fixture(scope="module")
def small_model():
    """A random DVA model whose UNet works at 32 px (decoding never runs the 256-px face encoders)."""
    from dva_model.model import DVAConfig, DVAModel
    from dva_model.testing import randomize_, tiny_unet_config

    torch.manual_seed(3)
    model = DVAModel(config=DVAConfig(unet=tiny_unet_config()))
    return randomize_(model, seed=3).eval().requires_grad_(False)


def _one_frame_latent(model, steps, model_id):
    from dva_model.formats.latent_io import Latent

    generator = torch.Generator().manual_seed(0)
    z_id = torch.nn.functional.normalize(torch.randn(1, 512, generator=generator), dim=1)
    return Latent(z_id=z_id, z_lnd=torch.rand(1, 102, generator=generator),
                  x_T=torch.randn(1, 3, model.image_size, model.image_size, generator=generator),
                  identity=z_id[0], steps=steps, model_id=model_id)


def test_decode_moves_the_progress_bar_on_every_unet_call_and_cancels_within_one(comfy_host, small_model):
    from nodes.types import Identity

    decode = pack_nodes()["DVADDIMDecode"]
    model, steps = _handle(small_model), 3
    latent = _one_frame_latent(small_model, steps, model.model_id)
    identity = Identity(base=latent.identity)
    calls = []
    hook = small_model.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        (crops,) = decode.execute(model, latent, identity, 1)
        assert crops.shape == (1, small_model.image_size, small_model.image_size, 3)
        assert 0 <= float(crops.min()) and float(crops.max()) <= 1
        total, values = comfy_host.bars[-1]
        assert (total, values) == (steps, [1, 2, 3]) and len(calls) == steps
        assert comfy_host.loads[-1]["models"] == [model.patcher], "the model must be made resident first"

        calls.clear()
        comfy_host.interrupt_after, comfy_host.checks = 0, 0  # Cancel pressed during the first UNet call
        with pytest.raises(InterruptProcessingException):
            decode.execute(model, latent, identity, 1)
        assert len(calls) == 1, "decoding must stop right after the UNet call during which Cancel came"
    finally:
        hook.remove()


def test_decode_refuses_an_encoding_of_another_model(comfy_host, small_model):
    from nodes.types import Identity

    latent = _one_frame_latent(small_model, 2, "other.ckpt:123")
    with pytest.raises(ValueError, match=r"made with the model 'other.ckpt:123'.*connect the loader"):
        pack_nodes()["DVADDIMDecode"].execute(_handle(small_model), latent, Identity(base=latent.identity), 1)


# ------------------------------------------------------------------------------------------------
# Identity and edits


def _random_classifier():
    from dva_model.edit.classifier import AttributeClassifier
    from dva_model.constants import CELEBA_ATTRIBUTES

    generator = torch.Generator().manual_seed(5)
    return AttributeClassifier(weight=torch.randn(40, 512, generator=generator),
                               mean=torch.randn(512, generator=generator) * 0.01,
                               std=torch.rand(512, generator=generator) * 0.05 + 0.02,
                               attribute_names=CELEBA_ATTRIBUTES)


def test_chained_attribute_edits_equal_one_multi_attribute_edit():
    from dva_model.edit.classifier import edit_identity
    from nodes.edit import DVAAttributeEdit
    from nodes.types import Identity

    classifier = _random_classifier()
    base = torch.nn.functional.normalize(torch.randn(8, 512), dim=1).mean(0)
    identity = Identity(base=base)
    (once,) = DVAAttributeEdit.execute(identity, classifier, "Mustache", 0.3, "keep (exact at 0)")
    (twice,) = DVAAttributeEdit.execute(once, classifier, "Young", -0.4, "keep (exact at 0)")
    expected = edit_identity(base, classifier, [("Mustache", 0.3), ("Young", -0.4)], norm="keep")
    assert torch.allclose(twice.edited(), expected, atol=1e-6)
    assert not torch.allclose(once.edited(), expected, atol=1e-3)
    assert identity.edits == (), "an edit node must not change its input (ComfyUI caches it)"
    (zero,) = DVAAttributeEdit.execute(identity, classifier, "Mustache", 0.0, "keep (exact at 0)")
    assert torch.equal(zero.edited(), base)
    (unit,) = DVAAttributeEdit.execute(identity, classifier, "Mustache", 0.0, "unit (as released)")
    assert abs(float(unit.edited().norm()) - 1) < 1e-5 and float(base.norm()) < 0.99


def test_unknown_custom_attribute_is_one_sentence_with_the_known_names():
    from dva_model.errors import UserError
    from nodes.edit import DVAAttributeEdit
    from nodes.types import Identity

    with pytest.raises(UserError, match=r"Unknown attribute 'Mustash'\. Did you mean Mustache"):
        DVAAttributeEdit.execute(Identity(base=torch.zeros(512)), _random_classifier(), "Young", 0.2,
                                 "keep (exact at 0)", custom_attribute="Mustash")


def test_identity_average_uses_the_inversion_identity_or_the_plain_mean():
    from dva_model.formats.latent_io import Latent
    from nodes.edit import DVAIdentityAverage

    z_id = torch.nn.functional.normalize(torch.randn(3, 512), dim=1)
    latent = Latent(z_id=z_id, z_lnd=torch.rand(3, 102), x_T=torch.randn(3, 3, 8, 8), identity=z_id[:2].mean(0),
                    steps=2)
    (inverted,) = DVAIdentityAverage.execute(latent, "inversion identity")
    (mean,) = DVAIdentityAverage.execute(latent, "mean of all frames")
    assert torch.equal(inverted.base, latent.identity)
    assert torch.allclose(mean.base, z_id.mean(0))


# ------------------------------------------------------------------------------------------------
# Saving and loading an encoding


def test_saved_latent_is_listed_and_loads_back_unchanged(comfy_host):
    from dva_model.formats.latent_io import Latent

    nodes = pack_nodes()
    z_id = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    latent = Latent(z_id=z_id, z_lnd=torch.rand(2, 102), x_T=torch.randn(2, 3, 16, 16), identity=z_id.mean(0),
                    steps=10, model_id="m.ckpt:1", frame_names=("frame_000000", "frame_000001"))
    saved = nodes["DVASaveLatent"].execute(latent, "dva/clip")
    (item,) = saved.ui["files"]
    name = f"{item['subfolder']}/{item['filename']} [output]"
    assert name in combo_options(nodes["DVALoadLatent"], "latent_file")
    assert nodes["DVALoadLatent"].validate_inputs(name) is True
    (loaded,) = nodes["DVALoadLatent"].execute(name)
    assert torch.equal(loaded.x_T, latent.x_T) and loaded.steps == 10 and loaded.model_id == "m.ckpt:1"
    assert "upload it first" in nodes["DVALoadLatent"].validate_inputs("missing.safetensors")


# ------------------------------------------------------------------------------------------------
# Optional dependencies and readable errors


def test_a_missing_optional_package_disables_only_its_node(comfy_host, monkeypatch):
    from nodes._host import MissingDependency

    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    (comfy_host.input / "clip.mp4").write_bytes(b"not read")
    with pytest.raises(MissingDependency, match=r"DVA Video Load needs the Python package 'av'.*pip install av"):
        pack_nodes()["DVAVideoLoad"].execute("clip.mp4", 0, 0, 1, 1.0)
    (identity,) = pack_nodes()["DVAIdentityAverage"].execute(
        types.SimpleNamespace(identity=torch.ones(512)), "inversion identity")  # other nodes still run
    assert identity.base.shape == (512,)


def test_missing_packages_are_named_at_start_up():
    from nodes._host import missing_packages

    assert missing_packages((("torch", "torch"), ("surely_not_installed_pkg", "surely-not"))) == ["surely-not"]


def test_video_load_validates_the_file_and_reads_the_selection(comfy_host):
    from media import single_face_video

    node = pack_nodes()["DVAVideoLoad"]
    assert "upload it first" in node.validate_inputs("nope.mp4")
    assert node.validate_inputs("nope.mp4", input_types={"source_video": "VIDEO"}) is True
    name = install(single_face_video(), comfy_host.input, "clip.mp4")
    assert name in combo_options(node, "video")
    frames, fps, audio, count = node.execute(name, 10, 3, 2, 1.0)
    assert frames.shape == (3, 360, 640, 3) and count == 3 and frames.dtype == torch.float32
    assert fps == pytest.approx(15.0)
    rate = audio["sample_rate"]
    assert audio["waveform"].shape[:2] == (1, 2) or audio["waveform"].shape[0] == 1
    assert abs(audio["waveform"].shape[-1] - rate * 6 / 30) <= rate * 0.05  # frames 10..15 at 30 fps: 0.2 s
    with pytest.raises(ValueError, match="GiB"):
        node.execute(name, 0, 0, 1, 0.1)
    assert node.fingerprint_inputs(name) == node.fingerprint_inputs(name)


def test_paste_back_refuses_frames_that_do_not_match_the_alignment(comfy_host):
    from nodes.paste import _check_sizes

    faces = types.SimpleNamespace(has_face=[True, False], info=types.SimpleNamespace(width=8, height=6),
                                  crops=torch.zeros(1, 3, 4, 4), config=types.SimpleNamespace(size=4))
    with pytest.raises(ValueError, match="got 3 frames but the alignment has 2"):
        _check_sizes(torch.zeros(3, 6, 8, 3), faces, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"Expected 1 crops \(one per frame with a face\), got 2"):
        _check_sizes(torch.zeros(2, 6, 8, 3), faces, torch.zeros(2, 3, 4, 4))
    _check_sizes(torch.zeros(2, 6, 8, 3), faces, torch.zeros(1, 3, 4, 4))


def test_paste_back_takes_a_mask_crops_of_another_size_and_returns_a_video(comfy_host):
    import numpy as np

    from dva_model.face.align import quads_from_axes

    size, count = 16, 2
    quads = quads_from_axes(np.array([[24.0, 16.0]] * count), np.array([[6.0, 0.0]] * count),
                            np.array([[0.0, 6.0]] * count))  # a 12 px square around (24, 16)
    faces = types.SimpleNamespace(has_face=np.array([True, True]), face_rows=np.array([0, 1]), indices=range(count),
                                  quads=quads, crops=torch.zeros(count, 3, size, size), info=types.SimpleNamespace(
                                      width=48, height=32), config=types.SimpleNamespace(size=size))
    frames = torch.zeros(count, 32, 48, 3)
    crops = torch.ones(count, 24, 24, 3)  # white, and larger than the alignment's 16 px
    model = types.SimpleNamespace(device=torch.device("cpu"))  # the face parser is not used with a mask
    node = pack_nodes()["DVAPasteBack"]
    audio = {"waveform": torch.zeros(1, 2, 100), "sample_rate": 1000}
    with torch.inference_mode():
        out, alpha, video = node.execute([frames], [faces], [crops], [model], ["release"], [False], [0], [0.0], [0.0],
                                         ["frame"], fps=[25.0], mask=[torch.ones(1, 8, 8)], audio=[audio])
    assert out.shape == frames.shape and alpha.shape == (count, 32, 48)
    assert out[:, 16, 24].min() > 0.99 and alpha[:, 16, 24].min() > 0.99, "the white crop is pasted in the square"
    assert torch.equal(out[:, :, :10], frames[:, :, :10]) and float(alpha[:, :, :10].max()) == 0
    components = video.get_components()
    assert components.images is out and components.frame_rate == 25 and components.audio is audio
    assert comfy_host.bars[-1] == (2 * count, [2 * count]), "one bar: the masks' share (the user's) and one chunk"
    with pytest.raises(ValueError, match=r"one MASK per edited crop \(2\) or a single one, got shape \(3, 8, 8\)"):
        node.execute([frames], [faces], [crops], [model], ["release"], [False], [0], [0.0], [0.0], ["frame"],
                     mask=[torch.ones(3, 8, 8)])


def test_face_parsing_reports_progress_per_batch_and_cancels(comfy_host, tiny_model):
    from dva_model.face.paste import PasteConfig
    from dva_model.pipeline import EditConfig, paste_masks
    from nodes._host import progress_callback

    crops = torch.rand(3, 3, 256, 256) * 2 - 1
    config = EditConfig(batch_size=1, paste=PasteConfig.from_preset("release", union_edited=True))
    masks = paste_masks(tiny_model, crops, crops, [0, 1, 2], config=config, callback=progress_callback())
    assert masks.shape == (3, 1, 256, 256)
    assert comfy_host.bars[-1] == (6, [1, 2, 3, 4, 5, 6]), "both parsing passes, one step per batch"
    comfy_host.interrupt_after = comfy_host.checks + 2
    with pytest.raises(InterruptProcessingException):
        paste_masks(tiny_model, crops, crops, [0, 1, 2], config=config, callback=progress_callback())
    assert comfy_host.bars[-1][1][-1] == 2, "parsing stopped at the Cancel"


def test_image_layout_conversion_round_trips(comfy_host):
    from nodes._host import crops_to_image, image_to_crops

    image = torch.rand(2, 5, 7, 3)
    crops = image_to_crops(image)
    assert crops.shape == (2, 3, 5, 7) and float(crops.min()) >= -1 and float(crops.max()) <= 1
    assert torch.allclose(crops_to_image(crops), image, atol=1e-6)
    with pytest.raises(ValueError, match=r"Expected an IMAGE batch \[N, H, W, 3\]"):
        image_to_crops(torch.rand(2, 3, 5, 7))


def test_encode_drives_one_bar_through_features_and_every_unet_call(comfy_host, tiny_model):
    """DVA Encode: one ProgressBar from the first feature batch to the last inversion call, never
    restarting between the two stages, and moving on every UNet call."""
    from dva_model.face.align import AlignConfig
    from dva_model.tracks import AlignedClip

    frames, steps = 2, 3
    crops = torch.rand(frames, 3, tiny_model.image_size, tiny_model.image_size, generator=torch.Generator().manual_seed(5))
    faces = AlignedClip(info=None, indices=range(frames), track=None, quads=np.zeros((frames, 4, 2)),
                        has_face=np.ones(frames, bool), config=AlignConfig(size=tiny_model.image_size),
                        crops=crops * 2 - 1)
    calls = []
    hook = tiny_model.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        (latent,) = pack_nodes()["DVAEncode"].execute(_handle(tiny_model), faces, steps, 1)
    finally:
        hook.remove()
    assert latent.x_T.shape == (frames, 3, tiny_model.image_size, tiny_model.image_size)
    assert len(calls) == frames * (steps - 1), "one frame per call, S - 1 inversion steps"
    # Units: a frame per feature batch (2), then a frame per inversion step (2 x 2): one bar of 6.
    assert comfy_host.bars[-1] == (6, [1, 2, 3, 4, 5, 6])
