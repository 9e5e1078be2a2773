"""Hostile model files, one attack class of issue 9 at a time, each file made here in the test.

1. a TorchScript archive (alone, or nested in a checkpoint through ``torch.storage._load_from_bytes``)
   whose ``__setstate__`` writes a file;
2. pickle BUILD on allow-listed functions: rewriting ``_rebuild_tensor_v2.__defaults__`` (every later
   load returns negated tensors) and the legacy format's ``dump_patches`` path writing a ``.patch`` file;
3. numpy object arrays and scalars built from raw bytes (attacker-chosen pointers);
4. sizes trusted before checking: a few hundred bytes of safetensors metadata asking for a huge UNet,
   crafted metadata, a stride-0 classifier weight standing for millions of rows, malformed statistics.
Each file goes through every loader it could reach (library, CLI, ComfyUI loader nodes) and must be
refused with one sentence naming it; nothing may be written anywhere, and a later legitimate load in
the same process must return exactly the saved tensors.
"""

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from comfy_fakes import install, pack_nodes
from conftest import write_release_checkpoint
from dva_model.cli.main import main as cli_main
from dva_model.constants import CELEBA_ATTRIBUTES, ID_DIM
from dva_model.edit.classifier import load_classifier
from dva_model.edit.clip_loss import load_clip
from dva_model.errors import UserError
from dva_model.formats.checkpoint import EncoderFiles, load_model
from dva_model.formats.latent_io import Latent, save_latent
from dva_model.formats.safe_pickle import load_pickled
from dva_model.train.trainer import load_training_state

PWNED = b"pwned\n"


class Payload(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by torch.jit.load) writes PWNED to ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.written = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> List[str]:
        return [self.path]

    @torch.jit.export
    def __setstate__(self, state: List[str]) -> None:
        self.training = False
        self.path = state[0]
        self.written = torch.from_file(state[0], True, 6, dtype=torch.uint8)  # creates the file, mapped shared
        self.written.copy_(torch.tensor([112, 119, 110, 101, 100, 10], dtype=torch.uint8))


# ------------------------------------------------------------------------------------------------
# Building hostile files


def _torchscript_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Payload(str(marker))), buffer)
    return buffer.getvalue()


class _Nested:
    """Pickles as torch.storage._load_from_bytes(archive), which the old allow-list resolved."""

    def __init__(self, archive: bytes):
        self.archive = archive

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.archive,)


def _classifier_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"classifier.weight": torch.randn(len(CELEBA_ATTRIBUTES), ID_DIM, generator=g),
            "classifier.bias": torch.zeros(len(CELEBA_ATTRIBUTES)),
            "conds_mean": torch.randn(1, ID_DIM, generator=g), "conds_std": torch.rand(1, ID_DIM, generator=g) + 0.5}


def _patch_pickle(path: Path, patch) -> Path:
    """Rewrite the data.pkl of the torch.save zip at ``path`` with ``patch(bytes) -> bytes``."""
    with zipfile.ZipFile(path) as source:
        records = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for name, data in records:
            target.writestr(name, patch(data) if name.endswith("/data.pkl") else data)
    return path


def _text(value: str) -> bytes:  # pickle BINUNICODE
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _build_on_function(module: str, name: str, slots: dict) -> bytes:
    """Opcodes that push function ``module.name`` and BUILD it with slot state ``slots`` (then POP it)."""
    items = b"".join(_text(key) + value for key, value in slots.items())
    return f"c{module}\n{name}\n".encode() + b"N}(" + items + b"u\x86b0"


def _legacy_file(main_pickle: bytes) -> bytes:
    """The legacy (non-zip) torch.save layout around ``main_pickle``: magic, version, sys info, keys."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(sys_info, protocol=2) + main_pickle + pickle.dumps([], protocol=2))


def _object_array_pickle_patch(data: bytes) -> bytes:
    """An int64 numpy array's pickle turned into an object array over the same raw bytes (its pointers)."""
    assert data.count(_text("i8")) == 1 and data.count(_text("<")) == 1
    return data.replace(_text("i8"), _text("O8")).replace(_text("<"), _text("|"))


HOSTILE = ("torchscript", "nested_torchscript", "build_defaults", "legacy_dump_patches", "numpy_array",
           "numpy_scalar", "stride0_classifier")


def make_hostile(kind: str, folder: Path) -> Path:
    """Write hostile file ``kind`` under ``folder``; a payload that runs would write folder/pwned*."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "pwned"
    path = folder / f"{kind}.ckpt"
    if kind == "torchscript":
        path.write_bytes(_torchscript_bytes(marker))
    elif kind == "nested_torchscript":
        torch.save({"state_dict": _classifier_state(), "extra": _Nested(_torchscript_bytes(marker))}, path)
    elif kind == "build_defaults":  # _rebuild_tensor_v2(..., metadata={"neg": True}) for every later tensor
        torch.save({"state_dict": _classifier_state()}, path)
        payload = _build_on_function("torch._utils", "_rebuild_tensor_v2", {"__defaults__": b"}" + _text("neg") + b"\x88s\x85"})
        _patch_pickle(path, lambda data: data[:2] + payload + data[2:])
    elif kind == "legacy_dump_patches":  # BUILD sets dump_patches and __name__, then a 'module' persistent id
        slots = {"dump_patches": b"\x88", "__name__": _text(str(marker))}
        main = (b"\x80\x02" + _build_on_function("torch._utils", "_rebuild_tensor", slots)
                + b"(" + _text("module") + b"ctorch._utils\n_rebuild_tensor\n" + _text("evil.py")
                + _text("import os; os.system('attacker command')\n") + b"tQ0}.")
        path.write_bytes(_legacy_file(main))
    elif kind == "numpy_array":
        torch.save({"state_dict": _classifier_state(), "stats": np.array([0x4141414141414141], dtype=np.int64)}, path)
        _patch_pickle(path, _object_array_pickle_patch)
    elif kind == "numpy_scalar":
        torch.save({"state_dict": _classifier_state(), "step": np.int64(0x4141414141414141)}, path)
        _patch_pickle(path, _object_array_pickle_patch)
    elif kind == "stride0_classifier":  # 8 KB on disk, 30 M rows once loaded
        state = _classifier_state()
        state["classifier.weight"] = torch.randn(1, ID_DIM).expand(30_000_000, ID_DIM)
        torch.save({"state_dict": state}, path)
    else:
        raise AssertionError(kind)
    return path


# ------------------------------------------------------------------------------------------------
# Watching for side effects


def _files(root: Path) -> set:
    return {p for p in root.rglob("*")}


@pytest.fixture
def guard(tmp_path, monkeypatch):
    """A fresh working directory; afterwards the torch internals attacks target are checked (and restored,
    so that a failing test does not poison the rest of the session)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    functions = (torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2)
    saved = [(f, f.__defaults__, f.__name__, dict(f.__dict__)) for f in functions]
    reference = tmp_path / "reference.pt"
    known = {"w": torch.linspace(-1, 1, 64).reshape(8, 8), "i": torch.arange(5)}
    torch.save(known, reference)
    yield known, reference
    tampered = [f.__name__ for f, defaults, name, attrs in saved
                if f.__defaults__ != defaults or f.__name__ != name or dict(f.__dict__) != attrs]
    for f, defaults, name, attrs in saved:
        f.__defaults__, f.__name__ = defaults, name
        f.__dict__.clear()
        f.__dict__.update(attrs)
    assert not tampered, f"the hostile file rewrote {tampered}"


def _assert_later_loads_intact(known, reference):
    for loaded in (torch.load(reference, weights_only=True), load_pickled(reference, what="The reference")):
        assert loaded.keys() == known.keys()
        for key, tensor in known.items():
            assert torch.equal(loaded[key], tensor) and not loaded[key].is_neg(), key


def _assert_one_sentence(message: str, path: Path):
    assert path.name in message, message  # (the nodes name their models/dva link)
    assert "\n" not in message.strip() and "Traceback" not in message, message


@pytest.fixture
def legit(tmp_path_factory):
    """Legitimate companions for the slots a hostile file does not occupy."""
    folder = tmp_path_factory.mktemp("legit")
    classifier = folder / "last.ckpt"
    torch.save({"state_dict": _classifier_state(1)}, classifier)
    no_stats = folder / "nostats.ckpt"
    state = _classifier_state(2)
    del state["conds_mean"], state["conds_std"]
    torch.save({"state_dict": state}, no_stats)
    latent = save_latent(folder / "clip.safetensors", Latent(
        z_id=torch.randn(1, ID_DIM), z_lnd=torch.rand(1, 102), x_T=torch.randn(1, 3, 8, 8),
        identity=torch.randn(ID_DIM), steps=2))
    return {"classifier": classifier, "no_stats": no_stats, "latent": latent}


# ------------------------------------------------------------------------------------------------
# Every way in


def _library_loaders(path: Path, legit: dict, tiny_model) -> dict:
    """Each library entry point a pickled model file reaches: name -> call."""
    from dva_model.formats.checkpoint import load_encoder_files

    return {
        "load_model (--checkpoint)": lambda: load_model(path),
        "load_classifier (--classifier)": lambda: load_classifier(path),
        "load_classifier latent_stats (--latent-stats)": lambda: load_classifier(legit["no_stats"], latent_stats=path),
        "EncoderFiles identity (--id-weights)": lambda: load_encoder_files(tiny_model, EncoderFiles(identity=path)),
        "EncoderFiles parser (--parser-weights)": lambda: load_encoder_files(tiny_model, EncoderFiles(parser=path)),
        "load_training_state (train --resume)": lambda: load_training_state(path),
        "load_clip (--clip-weights)": lambda: load_clip(path),
    }


def _cli_runs(path: Path, legit: dict, out: Path) -> dict:
    """The CLI with the hostile file in each model-file option of ``convert`` and ``decode``."""
    decode = ["decode", "--latent", str(legit["latent"]), "--out", str(out / "crops"), "--device", "cpu"]
    return {
        "convert SOURCE": ["convert", str(path), str(out / "converted.safetensors")],
        "decode --classifier": decode + ["--checkpoint", "unused.ckpt", "--attribute", "Smiling:0.3",
                                         "--classifier", str(path)],
        "decode --latent-stats": decode + ["--checkpoint", "unused.ckpt", "--attribute", "Smiling:0.3",
                                           "--classifier", str(legit["no_stats"]), "--latent-stats", str(path)],
        "decode --checkpoint": decode + ["--checkpoint", str(path)],
    }


def _node_runs(path: Path, host, legit: dict) -> dict:
    nodes = pack_nodes()
    name = install(path, host.models / "dva", path.name)
    stats_base = install(legit["no_stats"], host.models / "dva", "nostats.ckpt")
    return {
        "DVAModelLoader": lambda: nodes["DVAModelLoader"].execute(name, "fp32", "cpu"),
        "DVAClassifierLoader classifier": lambda: nodes["DVAClassifierLoader"].execute(name, "none"),
        "DVAClassifierLoader latent_stats": lambda: nodes["DVAClassifierLoader"].execute(stats_base, name),
    }


def _refused_everywhere(path: Path, legit: dict, tiny_model, comfy_host, capsys, expected: str):
    """Feed ``path`` to every loader; each must raise (or exit 2 with) one sentence naming it."""
    before = _files(comfy_host.root)
    for where, call in {**_library_loaders(path, legit, tiny_model), **_node_runs(path, comfy_host, legit)}.items():
        with pytest.raises(UserError) as error:
            call()
        _assert_one_sentence(str(error.value), path)
        assert __import__("re").search(expected, str(error.value)), f"{where}: {error.value}"
    out = comfy_host.root / "cli-out"
    for where, argv in _cli_runs(path, legit, out).items():
        code = cli_main(["--quiet"] + argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error:"), f"{where}: exit {code}, {err[-500:]}"
        _assert_one_sentence(err, path)
    assert _files(comfy_host.root) - before <= {comfy_host.models / "dva" / "nostats.ckpt",
                                                comfy_host.models / "dva" / path.name}, "something was written"


# ------------------------------------------------------------------------------------------------
# 1-3: code and memory attacks through the unpickler


@pytest.mark.parametrize("kind, expected", [
    ("torchscript", "TorchScript archive|not the weights of a CLIP|missing"),
    ("nested_torchscript", r"torch\.storage\._load_from_bytes \(a nested TorchScript"),
    ("build_defaults", r"asks the unpickler for more than tensors and plain containers \(Can only build Tensor"),
    ("legacy_dump_patches", r"asks the unpickler for more than tensors and plain containers \(Can only build Tensor"),
    ("numpy_array", r"numpy\._?core\.multiarray\._reconstruct \(numpy data"),
    ("numpy_scalar", r"numpy\._?core\.multiarray\.scalar \(numpy data"),
], ids=lambda value: value if value in HOSTILE else "refused")
def test_hostile_pickles_are_refused_everywhere_and_leave_no_trace(
        kind, expected, tmp_path, guard, legit, tiny_model, comfy_host, capsys):
    known, reference = guard
    path = make_hostile(kind, tmp_path / "hostile")
    _refused_everywhere(path, legit, tiny_model, comfy_host, capsys, expected)
    assert not list((tmp_path / "hostile").glob("pwned*")), "the payload ran"
    assert not list(Path.cwd().iterdir())
    _assert_later_loads_intact(known, reference)


def test_torchscript_archive_is_refused_before_unpickling(tmp_path, guard):
    path = make_hostile("torchscript", tmp_path / "hostile")
    with pytest.raises(UserError, match=r"is a TorchScript archive, which runs code from the file when loaded; "
                                        r"it is refused: re-save the weights"):
        load_pickled(path, what="The DVA checkpoint")
    assert not (tmp_path / "hostile" / "pwned").exists()


def test_a_later_model_load_is_bit_identical(tmp_path, guard, tiny_safetensors, tiny_model):
    """After the __defaults__ attack was refused, a real model still loads exactly (in the old loader
    every later tensor came back negated)."""
    with pytest.raises(UserError):
        load_classifier(make_hostile("build_defaults", tmp_path / "hostile"))
    loaded = load_model(tiny_safetensors).state_dict()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ------------------------------------------------------------------------------------------------
# 4: sizes and shapes from a file, checked before anything is allocated


def _metadata_model(path: Path, unet_config, *, extra_metadata=None) -> Path:
    from safetensors.torch import save_file

    metadata = {"format": "dva-model/1", **(extra_metadata or {})}
    if unet_config is not None:
        metadata["unet_config"] = unet_config if isinstance(unet_config, str) else json.dumps(unet_config)
    save_file({"unet.x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


RELEASE_FIELDS = {"image_size": 256, "in_channels": 3, "out_channels": 3, "model_channels": 128,
                  "channel_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2, "attention_resolutions": [16],
                  "num_heads": 1, "dropout": 0.1, "embed_channels": 512, "cond_channels": 512}


@pytest.mark.parametrize("unet_config, expected", [
    ({**RELEASE_FIELDS, "model_channels": 60000}, r"unet_config 'model_channels' must be a whole number from 1 to 1024, not 60000"),
    ({**RELEASE_FIELDS, "num_heads": 0}, r"unet_config 'num_heads' must be a whole number from 1 to 64, not 0"),
    ({**RELEASE_FIELDS, "image_size": "256"}, r"unet_config 'image_size' must be a whole number .* not '256'"),
    ({**RELEASE_FIELDS, "gpu_memory": 1}, r"unknown fields gpu_memory"),
    ({k: v for k, v in RELEASE_FIELDS.items() if k != "dropout"}, r"missing fields dropout"),
    ({**RELEASE_FIELDS, "channel_mult": [1] * 40}, r"'channel_mult' must be a list of at most 8 whole numbers"),
    ([1, 2], r"is a list, not an object of fields"),
    ("{not json", r"unet_config metadata is not valid JSON"),
    (None, r"has no unet_config in its metadata"),
    (RELEASE_FIELDS, r"does not match the DVA model layout"),  # valid config, but the weights are not there
], ids=["huge_width", "zero_heads", "string_size", "unknown_key", "missing_field", "too_many_levels",
        "not_an_object", "bad_json", "no_unet_config", "no_weights"])
def test_crafted_safetensors_metadata_is_one_sentence_before_allocating(
        tmp_path, guard, comfy_host, capsys, unet_config, expected):
    path = _metadata_model(tmp_path / "model.safetensors", unet_config)
    assert path.stat().st_size < 1024  # a few hundred bytes asking for up to 110 GiB of UNet
    with pytest.raises(UserError, match=expected) as error:
        load_model(path)
    _assert_one_sentence(str(error.value), path)
    with pytest.raises(UserError, match=expected):
        pack_nodes()["DVAModelLoader"].execute(install(path, comfy_host.models / "dva", "m.safetensors"), "fp32", "cpu")
    assert cli_main(["--quiet", "convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert __import__("re").search(expected, capsys.readouterr().err)
    assert not (tmp_path / "out.safetensors").exists()


def test_safetensors_header_claiming_more_than_the_file_is_refused(tmp_path, guard):
    path = _metadata_model(tmp_path / "model.safetensors", RELEASE_FIELDS)
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["unet.x"]["data_offsets"] = [0, 2**40]
    header["unet.x"]["shape"] = [2**38]
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(data[8 + length:]))
    with pytest.raises(UserError, match=r"tensors claim 1,099,511,627,776 bytes but the file holds 4"):
        load_model(path)


def test_stride0_classifier_is_refused_before_30_million_names(tmp_path, guard, legit, tiny_model, comfy_host, capsys):
    path = make_hostile("stride0_classifier", tmp_path / "hostile")
    assert path.stat().st_size < 16_000
    _refused_everywhere(path, legit, tiny_model, comfy_host, capsys,
                        r"claims \(30000000, 512\) \(15,360,000,000 elements\) but the file stores only 2,048 bytes")


@pytest.mark.parametrize("state, expected", [
    ({"classifier.weight": [[0.0] * ID_DIM] * 40}, r"classifier.weight must be a float \[K, 512\] tensor .* not a list"),
    ({"classifier.weight": torch.zeros(2000, ID_DIM)}, r"K from 1 to 1024, not a tensor \(2000, 512\)"),
    ({"classifier.weight": torch.zeros(40, 7)}, r"not a tensor \(40, 7\)"),
    ({"classifier.weight": torch.zeros(40, ID_DIM), "conds_mean": "x", "conds_std": torch.ones(ID_DIM)},
     r"conds_mean must be a float tensor of 512 numbers, not a str"),
], ids=["weight_is_a_list", "too_many_rows", "wrong_width", "mean_is_a_string"])
def test_malformed_classifier_is_one_sentence(tmp_path, state, expected):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError, match=expected) as error:
        load_classifier(path)
    _assert_one_sentence(str(error.value), path)


@pytest.mark.parametrize("stats, expected", [
    ([torch.zeros(ID_DIM), torch.ones(ID_DIM)], r"holds a list without conds_mean and conds_std"),
    ({"conds": torch.zeros(3, ID_DIM), "conds_mean": torch.zeros(ID_DIM)}, r"holds a dict without conds_mean and conds_std"),
    ({"conds_mean": torch.zeros(7), "conds_std": torch.ones(ID_DIM)}, r"conds_mean must be a float tensor of 512"),
], ids=["a_list", "missing_std", "wrong_size"])
def test_malformed_latent_statistics_are_one_sentence(tmp_path, legit, stats, expected, capsys):
    path = tmp_path / "latent.pkl"
    torch.save(stats, path)
    with pytest.raises(UserError, match=expected) as error:
        load_classifier(legit["no_stats"], latent_stats=path)
    _assert_one_sentence(str(error.value), path)


def test_bad_json_in_direction_metadata_names_the_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "dirs.safetensors"
    save_file({"weight": torch.zeros(2, ID_DIM), "mean": torch.zeros(ID_DIM), "std": torch.ones(ID_DIM)}, str(path),
              metadata={"format": "dva-directions/1", "attribute_names": "[not json"})
    with pytest.raises(UserError, match="attribute_names metadata is not valid JSON") as error:
        load_classifier(path)
    _assert_one_sentence(str(error.value), path)


# ------------------------------------------------------------------------------------------------
# What must keep loading


def test_release_formats_still_load(tmp_path, tiny_model, guard):
    """The released Lightning layout with a pickled config.TrainConfig, a legacy-format file and the
    classifier: loaded through the new loader, tensors exact."""
    path = write_release_checkpoint(tmp_path / "epoch=51-step=1000000.ckpt", tiny_model, tiny_model, hparams="object")
    conf = load_pickled(path, what="The DVA checkpoint")["hyper_parameters"]["conf"]
    assert conf.img_size == tiny_model.config.unet.image_size and conf.model_name.value == "beatgans_autoenc"
    legacy = tmp_path / "79999_iter.pth"
    weights = {"cp.conv.weight": torch.randn(4, 3, 3, 3), "cp.bn.running_mean": torch.randn(4)}
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    loaded = load_pickled(legacy, what="The encoder file")
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    classifier = tmp_path / "last.ckpt"
    torch.save({"state_dict": _classifier_state(4)}, classifier)
    assert torch.equal(load_classifier(classifier).weight, _classifier_state(4)["classifier.weight"])
