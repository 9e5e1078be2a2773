"""Model files: the released Lightning layout, our safetensors, conversion and clear errors."""

import dataclasses
import os
import pickle

import pytest
import torch

from conftest import make_tiny_model, tiny_dva_config, write_release_checkpoint
from dva_model.formats.checkpoint import EncoderFiles, load_model, read_model_state, save_model
from dva_model.formats.release_keys import release_state_from_model
from dva_model.cli.main import main as cli_main
from dva_model.errors import ModelFileError
from dva_model.model import DVAConfig
from dva_model.formats.safe_pickle import load_pickled


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].float(), sb[key].float()), key


def test_release_checkpoint_loads_the_ema_weights(tiny_checkpoint, tiny_model):
    loaded = load_model(tiny_checkpoint)
    _assert_same_weights(loaded, tiny_model)  # ema_model.*, not model.*
    assert loaded.config == tiny_model.config  # architecture read back from hyper_parameters
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.fixture(scope="module")
def model_at_128():
    """A model trained at 128 x 128: only hyper_parameters can tell its image size (shapes cannot)."""
    unet = dataclasses.replace(tiny_dva_config().unet, image_size=128, attention_resolutions=(16,), dropout=0.0)
    return make_tiny_model(seed=7, config=DVAConfig(unet=unet))


@pytest.mark.parametrize("hparams", ["jsonable", "object"])
def test_hyper_parameters_give_what_shapes_cannot(tmp_path, model_at_128, hparams):
    path = write_release_checkpoint(tmp_path / "h.ckpt", model_at_128, model_at_128, hparams=hparams)
    _, config = read_model_state(path)
    assert config == model_at_128.config.unet  # image size 128, attention at 16, dropout 0


def test_release_checkpoint_without_hparams_infers_architecture(tmp_path, tiny_model, model_at_128):
    path = write_release_checkpoint(tmp_path / "noh.ckpt", tiny_model, make_tiny_model(seed=5), hparams="none")
    _, config = read_model_state(path)
    assert config == tiny_model.config.unet
    path = write_release_checkpoint(tmp_path / "noh128.ckpt", model_at_128, model_at_128, hparams="none")
    _, config = read_model_state(path)
    assert config.image_size == 256 and config.attention_resolutions == (32,)  # assumed 256 without hparams


def test_plain_release_state_dict_loads(tmp_path, tiny_model):
    path = tmp_path / "plain.pt"
    torch.save(release_state_from_model(tiny_model), path)
    _assert_same_weights(load_model(path), tiny_model)


def test_safetensors_round_trip_and_half_precision(tmp_path, tiny_model, tiny_safetensors):
    _assert_same_weights(load_model(tiny_safetensors), tiny_model)
    half = save_model(tmp_path / "half.safetensors", tiny_model, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * tiny_safetensors.stat().st_size
    model = load_model(half, dtype=torch.bfloat16)
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.encoder.parameters()).dtype == torch.float32  # encoders stay fp32, as released


def test_convert_command(tmp_path, tiny_checkpoint, tiny_model):
    out = tmp_path / "converted.safetensors"
    before = tiny_checkpoint.stat().st_mtime_ns
    assert cli_main(["--quiet", "convert", str(tiny_checkpoint), str(out)]) == 0
    _assert_same_weights(load_model(out), tiny_model)
    assert out.stat().st_size < 0.6 * tiny_checkpoint.stat().st_size  # EMA copy only
    assert tiny_checkpoint.stat().st_mtime_ns == before


def test_no_code_runs_while_loading(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"ema_model.x": torch.ones(1)}, "payload": Exploit()}, path)
    with pytest.raises(ModelFileError, match=r"evil.ckpt contains (posix|nt).system \(a Python object"):
        load_pickled(path, what="test")
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"PK\x03\x04 definitely not a zip", "could not be read"),
    (pickle.dumps({"hello": "world"}), "is a pickle but not a PyTorch file"),
])
def test_bad_files_give_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist.*epoch=51-step=1000000.ckpt"):
        load_model(tmp_path / "models" / "dva" / "epoch=51-step=1000000.ckpt")


def test_foreign_state_dict_rejected(tmp_path):
    path = tmp_path / "sd15.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.ones(3)}}, path)
    with pytest.raises(ModelFileError, match="face encoder|not a Diffusion Video Autoencoder"):
        load_model(path)


def test_classifier_checkpoint_passed_as_model(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"classifier.weight": torch.ones(40, 512), "conds_mean": torch.ones(1, 512)}}, path)
    with pytest.raises(ModelFileError, match="classifier"):
        load_model(path)


def test_wrong_shape_is_named(tmp_path, tiny_model):
    release = release_state_from_model(tiny_model)
    key = "encoder.linear.weight"
    release[key] = torch.zeros(7, 7)
    path = tmp_path / "wrong.pt"
    torch.save(release, path)
    with pytest.raises(ModelFileError, match="linear.weight"):
        load_model(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])  # the 2018-19 files predate the zip
def test_released_encoder_files_replace_the_checkpoints(tmp_path, tiny_checkpoint, zip_format):
    other = make_tiny_model(seed=9).encoder
    from dva_model.formats import release_keys

    files = {}
    for name, module, to_file in (
        ("model_ir_se50.pth", other.idnet, release_keys.idnet_file_state),
        ("mobilenet_224_model_best_gdconv_external.pth.tar", other.lndnet, release_keys.lndnet_file_state),
        ("79999_iter.pth", other.bgnet, release_keys.bgnet_file_state),
    ):
        files[name] = tmp_path / name
        torch.save(to_file(module.state_dict()), files[name], _use_new_zipfile_serialization=zip_format)
    model = load_model(tiny_checkpoint, encoder_files=EncoderFiles(
        identity=files["model_ir_se50.pth"], landmarks=files["mobilenet_224_model_best_gdconv_external.pth.tar"],
        parser=files["79999_iter.pth"]))
    for name in ("idnet", "lndnet", "bgnet"):
        _assert_same_weights(getattr(model.encoder, name), getattr(other, name))
    assert not torch.equal(model.encoder.linear.weight, other.linear.weight)  # z_face layer stays the checkpoint's
