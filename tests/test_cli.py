"""The encode / decode commands end to end on real face crops with a tiny random checkpoint."""

import numpy as np
import pytest
import torch
from PIL import Image

from dva_model.cli.main import main as cli_main
from dva_model.formats.image_io import read_crops
from dva_model.formats.latent_io import load_latent

STEPS = 10


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return 10 * np.log10(4.0 / mse)  # range [-1, 1] -> peak-to-peak 2


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory):
    """Three 256x256 crops around the astronaut's face (scikit-image's bundled photograph)."""
    from skimage import data

    image = data.astronaut()  # 512x512 RGB, face near (x 180-300, y 30-200)
    folder = tmp_path_factory.mktemp("aligned")
    for index, (dx, dy) in enumerate([(0, 0), (6, 2), (12, 4)]):
        crop = image[dy:dy + 256, 110 + dx:366 + dx]
        Image.fromarray(crop).save(folder / f"frame_{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_checkpoint, aligned_dir):
    out = tmp_path_factory.mktemp("latent") / "clip.safetensors"
    assert cli_main(["--quiet", "encode", "--checkpoint", str(tiny_checkpoint), "--aligned", str(aligned_dir),
                     "--steps", str(STEPS), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_encode_writes_the_published_latent(encoded, tiny_model, aligned_dir):
    latent = load_latent(encoded)
    assert latent.z_id.shape == (3, 512) and latent.z_lnd.shape == (3, 102) and latent.x_T.shape == (3, 3, 256, 256)
    assert latent.steps == STEPS and latent.frame_names == ("frame_000", "frame_001", "frame_002")
    torch.testing.assert_close(latent.z_id.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(latent.identity, latent.z_id.mean(0))  # inverted with the mean identity
    _, crops = read_crops(aligned_dir, size=256)
    z_id, z_lnd = tiny_model.encode_features(crops)
    torch.testing.assert_close(latent.z_id, z_id)
    torch.testing.assert_close(latent.z_lnd, z_lnd)


def test_decode_reconstructs_and_edit_changes(tmp_path, encoded, tiny_checkpoint, aligned_dir):
    recon_dir, edit_dir = tmp_path / "recon", tmp_path / "edit"
    assert cli_main(["--quiet", "decode", "--checkpoint", str(tiny_checkpoint), "--latent", str(encoded),
                     "--out", str(recon_dir), "--device", "cpu"]) == 0
    names, original = read_crops(aligned_dir, size=256)
    recon_names, recon = read_crops(recon_dir, size=256)
    assert recon_names == names
    psnr = _psnr(recon, original)
    assert psnr > 30, f"reconstruction PSNR {psnr:.1f} dB"

    classifier = tmp_path / "last.ckpt"
    g = torch.Generator().manual_seed(3)
    torch.save({"state_dict": {"classifier.weight": torch.randn(40, 512, generator=g),
                               "classifier.bias": torch.zeros(40),
                               "conds_mean": torch.randn(1, 512, generator=g) * 0.03,
                               "conds_std": torch.rand(1, 512, generator=g) * 0.03 + 0.03}}, classifier)
    assert cli_main(["--quiet", "decode", "--checkpoint", str(tiny_checkpoint), "--latent", str(encoded),
                     "--out", str(edit_dir), "--attribute", "Mustache:0.25", "--classifier", str(classifier),
                     "--device", "cpu"]) == 0
    _, edited = read_crops(edit_dir, size=256)
    assert (edited - recon).abs().max() > 2 / 255  # the identity change reaches the pixels


def test_attribute_without_classifier_is_one_sentence(tmp_path, encoded, tiny_checkpoint, capsys):
    code = cli_main(["decode", "--checkpoint", str(tiny_checkpoint), "--latent", str(encoded),
                     "--out", str(tmp_path / "o"), "--attribute", "Mustache:0.3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "--classifier" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_empty_aligned_folder(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    code = cli_main(["encode", "--checkpoint", str(tiny_checkpoint), "--aligned", str(tmp_path / "empty"),
                     "--steps", "5", "--out", str(tmp_path / "l.safetensors")])
    assert code == 2 and "no .png or .jpg" in capsys.readouterr().err
    assert not (tmp_path / "l.safetensors").exists()


def test_decode_applies_a_clip_delta_before_attributes(tmp_path, encoded, tiny_checkpoint, tiny_model):
    from dva_model.edit.clip_edit import save_delta
    from dva_model.edit.identity import IdentityDelta, apply_delta
    from dva_model.formats.image_io import crops_to_uint8

    g = torch.Generator().manual_seed(11)
    delta = torch.randn(512, generator=g) * 0.05
    path = save_delta(tmp_path / "beard.safetensors", IdentityDelta(delta=delta, source_text="face",
                                                                    target_text="face with beard"))
    out = tmp_path / "delta"
    assert cli_main(["--quiet", "decode", "--checkpoint", str(tiny_checkpoint), "--latent", str(encoded),
                     "--out", str(out), "--delta", f"{path}:0.8", "--device", "cpu"]) == 0
    latent = load_latent(encoded)
    expected = tiny_model.decode(latent.x_T, apply_delta(latent.identity, delta, scale=0.8), latent.z_lnd, steps=STEPS)
    _, written = read_crops(out, size=256)
    assert np.array_equal(crops_to_uint8(written), crops_to_uint8(expected))  # PNG round trip is exact for uint8


def test_bad_delta_option_is_one_sentence(tmp_path, encoded, tiny_checkpoint, capsys):
    code = cli_main(["decode", "--checkpoint", str(tiny_checkpoint), "--latent", str(encoded),
                     "--out", str(tmp_path / "o"), "--delta", str(tmp_path / "missing.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_global_options_work_before_or_after_the_command():
    from dva_model.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["convert", "a.ckpt", "b.safetensors", "--quiet"]).quiet is True
    assert parser.parse_args(["--quiet", "convert", "a.ckpt", "b.safetensors"]).quiet is True
    args = parser.parse_args(["convert", "a.ckpt", "b.safetensors"])
    assert args.quiet is False and args.debug is False
