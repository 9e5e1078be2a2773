"""The ``download`` command, its library and the loaders' download option, against a stand-in Google
Drive on 127.0.0.1 (tests/drive_standin.py) serving small random files in the released formats.

No test touches the internet: ``DVA_DRIVE_URL`` points the client at the stand-in, and the CLIP test
points huggingface_hub (open_clip's download) at it with ``HF_ENDPOINT``.
"""

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_fakes import combo_options
from drive_standin import DriveStandIn, serve
from dva_model.cli.main import main
from dva_model.formats import download as download_module
from dva_model.formats.download import DRIVE_URL_ENV, DownloadError, download_drive_file, partial_path
from dva_model.formats.release import CHECKPOINT, CLASSIFIER, CONVERTED_MODEL, LATENT_STATS, MANIFEST_NAME
from dva_model.constants import ID_DIM

LARGE_ID = "test-large-file"  # a file above the stand-in's confirmation threshold
REPO_ROOT = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _files(folder: Path) -> set:
    """Every file under ``folder`` (hidden partial files included), relative."""
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()}


def _one_sentence(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    return lines[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_checkpoint):
    """The released files as the stand-in serves them: the tiny Lightning checkpoint, a release-format
    classifier (last.ckpt, no statistics of its own) and latent.pkl."""
    from test_classifier import _classifier, _write_release_classifier

    folder = tmp_path_factory.mktemp("drive")
    classifier = _write_release_classifier(folder / "last.ckpt", _classifier(seed=3), with_stats=False)
    stats = folder / "latent.pkl"
    g = torch.Generator().manual_seed(4)
    torch.save({"conds": torch.randn(5, ID_DIM, generator=g), "conds_mean": torch.randn(ID_DIM, generator=g) * 0.05,
                "conds_std": torch.rand(ID_DIM, generator=g) * 0.05 + 0.02}, stats)
    large = folder / "large.bin"
    large.write_bytes(torch.randint(0, 256, (3 << 20,), dtype=torch.uint8, generator=g).numpy().tobytes())
    return {CHECKPOINT: tiny_checkpoint, CLASSIFIER: classifier, LATENT_STATS: stats, LARGE_ID: large}


@pytest.fixture
def drive(release, monkeypatch):
    stand_in = DriveStandIn()
    for key, path in release.items():
        if key == LARGE_ID:
            stand_in.add(LARGE_ID, "large.bin", path)
        else:
            stand_in.add(key.drive_id, Path(key.name).name, path)
    server = serve(stand_in)
    monkeypatch.setenv(DRIVE_URL_ENV, stand_in.url)
    yield stand_in
    server.shutdown()
    server.server_close()


def test_download_then_edit_end_to_end_with_a_resumed_transfer(tmp_path, drive, release, tiny_model, capsys):
    """The README's two commands against the stand-in: download (cut off once, resumed), then edit."""
    from dva_model.formats.checkpoint import load_model
    from dva_model.formats.video import probe
    from media import single_face_video

    models = tmp_path / "models" / "dva"
    drive.interrupt[CHECKPOINT.drive_id] = 1
    assert main(["--quiet", "download", "--to", str(models), "--what", "dva,classifier", "--retries", "0"]) == 2
    message = _one_sentence(capsys.readouterr().err)
    assert "The download of epoch=51-step=1000000.ckpt was interrupted after" in message
    assert message.endswith("run the command again to resume from there.")
    partial = partial_path(models / CHECKPOINT.name)
    assert _files(models) == {partial.relative_to(models).as_posix()}  # nothing under a final name
    kept = partial.stat().st_size
    assert 0 < kept < release[CHECKPOINT].stat().st_size

    assert main(["--quiet", "download", "--to", str(models), "--what", "dva,classifier"]) == 0
    assert drive.ranges(CHECKPOINT.drive_id) == [None, f"bytes={kept}-"]  # confirmed, cut; then resumed
    assert _files(models) == {CHECKPOINT.name, CONVERTED_MODEL, CLASSIFIER.name, LATENT_STATS.name, MANIFEST_NAME}
    for release_file in (CHECKPOINT, CLASSIFIER, LATENT_STATS):
        assert _sha256(models / release_file.name) == _sha256(release[release_file])  # byte-identical
    manifest = json.loads((models / MANIFEST_NAME).read_text())["files"]
    assert set(manifest) == {CHECKPOINT.name, CONVERTED_MODEL, CLASSIFIER.name, LATENT_STATS.name}
    for name, entry in manifest.items():
        assert entry["sha256"] == _sha256(models / name) and entry["size"] == (models / name).stat().st_size
    assert manifest[CHECKPOINT.name]["source"].endswith(f"id={CHECKPOINT.drive_id}")
    converted = load_model(models / CONVERTED_MODEL).state_dict()  # the EMA weights, nothing else
    assert all(torch.equal(converted[k], v) for k, v in tiny_model.state_dict().items())
    assert (models / CONVERTED_MODEL).stat().st_size < release[CHECKPOINT].stat().st_size / 1.8

    out = tmp_path / "edited.mp4"
    assert main(["--quiet", "edit", "--checkpoint", str(models / CONVERTED_MODEL),
                 "--classifier", str(models / CLASSIFIER.name), "--latent-stats", str(models / LATENT_STATS.name),
                 "--attribute", "Mustache:0.25", "--video", str(single_face_video()), "--out", str(out),
                 "--max-frames", "2", "--steps", "2", "--device", "cpu", "--lossless"]) == 0
    info = probe(out)
    assert (info.frame_count, info.width, info.height) == (2, 640, 360)

    requests_before = len(drive.requests)
    assert main(["--quiet", "download", "--to", str(models), "--what", "dva,classifier"]) == 0
    assert len(drive.requests) == requests_before  # everything was there: nothing fetched again


def test_an_interrupted_transfer_resumes_within_the_run(tmp_path, drive, release):
    drive.interrupt[LARGE_ID] = 2
    got = download_drive_file(LARGE_ID, tmp_path / "large.bin", retries=2)
    size = release[LARGE_ID].stat().st_size
    first, *resumed = drive.ranges(LARGE_ID)
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in resumed]  # each resumes where the last stopped
    assert first is None and len(offsets) == 2 and 0 < offsets[0] < offsets[1] < size
    assert got.size == size and got.sha256 == _sha256(release[LARGE_ID]) == _sha256(tmp_path / "large.bin")
    assert _files(tmp_path) == {"large.bin"}


def test_a_complete_partial_file_is_finished_without_fetching_it_again(tmp_path, drive, release):
    partial_path(tmp_path / "large.bin").write_bytes(release[LARGE_ID].read_bytes())  # stopped before the rename
    got = download_drive_file(LARGE_ID, tmp_path / "large.bin")
    assert got.sha256 == _sha256(release[LARGE_ID]) and _files(tmp_path) == {"large.bin"}


def test_a_wrong_size_is_refused_and_nothing_is_saved(tmp_path, drive, release):
    size = release[LARGE_ID].stat().st_size
    drive.substitute[LARGE_ID] = bytes(size + 1000)
    with pytest.raises(DownloadError) as caught:
        download_drive_file(LARGE_ID, tmp_path / "large.bin", expected_size=size)
    assert str(caught.value) == (f"The server offers large.bin with {size + 1000:,} bytes, but the released file has "
                                 f"{size:,}; it is not the released file, so nothing was saved.")
    assert _files(tmp_path) == set()


def test_no_network_is_one_sentence(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe_socket:  # a port nobody listens on
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    monkeypatch.setenv(DRIVE_URL_ENV, f"http://127.0.0.1:{port}")
    assert main(["--quiet", "download", "--to", str(tmp_path / "dva"), "--what", "classifier"]) == 2
    assert _one_sentence(capsys.readouterr().err) == (
        f"error: Cannot reach http://127.0.0.1:{port} to download last.ckpt (Connection refused); "
        "check the network connection and run the command again.")
    assert _files(tmp_path) == set()


def test_too_little_free_space_is_refused_before_any_byte(tmp_path, drive, release, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(download_module.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=10 << 20))  # 10 MB free
    with pytest.raises(DownloadError, match=r"^Not enough free disk space for large.bin in .*: it needs 3.0 MB more "
                                            r"and 10.0 MB are free; free some space and run the command again.$"):
        download_drive_file(LARGE_ID, tmp_path / "large.bin")
    assert _files(tmp_path) == set()


def test_a_full_disk_mid_transfer_keeps_the_partial_file_and_the_next_run_resumes(tmp_path, drive, release,
                                                                                   monkeypatch):
    writes = []
    real_write = download_module._write

    def write_until_full(sink, chunk):
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(len(chunk))
        real_write(sink, chunk)

    monkeypatch.setattr(download_module, "_write", write_until_full)
    target = tmp_path / "large.bin"
    with pytest.raises(DownloadError) as caught:
        download_drive_file(LARGE_ID, target)
    assert str(caught.value) == (f"Cannot write {partial_path(target)} (No space left on device); free some disk "
                                 "space and run the command again (it resumes from the bytes already saved).")
    assert not target.exists() and partial_path(target).stat().st_size == writes[0]

    monkeypatch.setattr(download_module, "_write", real_write)  # space was freed
    assert download_drive_file(LARGE_ID, target).sha256 == _sha256(release[LARGE_ID])
    assert drive.ranges(LARGE_ID)[-1] == f"bytes={writes[0]}-"


def test_drive_quota_page_is_one_sentence(tmp_path, drive):
    drive.quota.add(LATENT_STATS.drive_id)
    with pytest.raises(DownloadError) as caught:
        download_drive_file(LATENT_STATS.drive_id, tmp_path / "latent.pkl")
    assert str(caught.value) == ("Google Drive refused latent.pkl (Too many users have viewed or downloaded this file "
                                 "recently); try again later (a shared file has a daily download quota).")
    assert _files(tmp_path) == set()


def test_a_file_that_is_not_the_released_one_is_deleted(tmp_path, drive, capsys):
    drive.substitute[CLASSIFIER.drive_id] = b"<html>not a checkpoint</html>" * 10
    assert main(["--quiet", "download", "--to", str(tmp_path), "--what", "classifier"]) == 2
    message = _one_sentence(capsys.readouterr().err)
    assert message.startswith("error: The downloaded last.ckpt is not the released file (")
    assert message.endswith("); it was deleted and nothing was saved.")
    assert _files(tmp_path) == set()


def test_unknown_group_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["download", "--what", "dva,weights"])
    assert "--what 'dva,weights' is not a comma-separated list of dva, classifier, clip." in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# ComfyUI loaders


def test_loaders_name_the_command_and_download_only_when_asked(comfy_host, drive, release):
    from nodes.load import DVAClassifierLoader, DVAModelLoader

    folder = comfy_host.models / "dva"
    for loader, key in ((DVAModelLoader, "checkpoint"), (DVAClassifierLoader, "classifier")):
        (option,) = [item for item in loader.define_schema().inputs if item.id == "download_if_missing"]
        assert option.optional and option.options["default"] is False
        offered = combo_options(loader, key)
        assert (CHECKPOINT.name if key == "checkpoint" else CLASSIFIER.name) in offered  # before any file exists
    assert CLASSIFIER.name not in combo_options(DVAModelLoader, "checkpoint"), "each loader offers its own files"
    assert combo_options(DVAClassifierLoader, "latent_stats") == ["none", LATENT_STATS.name]
    with pytest.raises(FileNotFoundError) as caught:
        DVAModelLoader.execute(CHECKPOINT.name, "fp32", "cpu")
    assert str(caught.value).endswith(
        f"turn on download_if_missing in this loader or run `python -m dva_model download --what dva --to {folder}`.")
    with pytest.raises(FileNotFoundError, match=r"--what classifier --to"):
        DVAClassifierLoader.execute(CLASSIFIER.name, LATENT_STATS.name)
    assert drive.requests == [] and _files(folder) == set()  # nothing was fetched without the option

    (classifier,) = DVAClassifierLoader.execute(CLASSIFIER.name, LATENT_STATS.name, download_if_missing=True)
    assert _sha256(folder / CLASSIFIER.name) == _sha256(release[CLASSIFIER])
    assert _sha256(folder / LATENT_STATS.name) == _sha256(release[LATENT_STATS])
    stats = torch.load(release[LATENT_STATS])
    assert torch.equal(classifier.mean, stats["conds_mean"])
    totals = [total for total, _ in comfy_host.bars]
    assert release[CLASSIFIER].stat().st_size in totals and release[LATENT_STATS].stat().st_size in totals
    assert all(values[-1] == total for total, values in comfy_host.bars if values)


# ------------------------------------------------------------------------------------------------
# CLIP through open_clip's own download


def test_clip_comes_through_open_clip_into_its_cache(tmp_path, drive):
    """open_clip -> huggingface_hub -> the stand-in hub (HF_ENDPOINT), in a fresh process."""
    from safetensors.torch import save_file

    from dva_model.edit.clip_loss import CLIP_MANIFEST_KEY, HF_CACHE_REPO, load_clip
    from test_clip_edit import tiny_clip

    state = tiny_clip(seed=5).state_dict()
    weights = tmp_path / "served.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    drive.hub[f"{HF_CACHE_REPO}/resolve/main/open_clip_model.safetensors"] = weights.read_bytes()
    home = tmp_path / "home"
    env = {**os.environ, "HF_ENDPOINT": drive.url, "HF_HOME": str(home / "hf"), "HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    models = tmp_path / "dva"
    result = subprocess.run([sys.executable, "-m", "dva_model", "--quiet", "download", "--what", "clip",
                             "--to", str(models)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    entry = json.loads((models / MANIFEST_NAME).read_text())["files"][CLIP_MANIFEST_KEY]
    path = Path(entry["path"])
    assert path.is_file() and path.resolve().is_relative_to((home / "hf").resolve())
    assert entry["sha256"] == _sha256(weights)
    loaded = load_clip(path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
