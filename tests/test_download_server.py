"""The loaders' download_if_missing option on a real ComfyUI server, against the stand-in Drive.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout (as tests/test_comfy_server.py). The server
starts with ``DVA_DRIVE_URL`` pointing at the stand-in on 127.0.0.1 and an empty models folder; the
loaders' outputs go to core's PreviewAny so that the graph has an output.
"""

import hashlib
import json
import os
import subprocess
import time
import urllib.request

import pytest

from drive_standin import DriveStandIn, serve
from dva_model.formats.download import DRIVE_URL_ENV
from dva_model.formats.release import CHECKPOINT, CLASSIFIER, CONVERTED_MODEL, LATENT_STATS, MANIFEST_NAME
from test_comfy_server import COMFYUI_DIR, REPO, STARTUP_TIMEOUT_S, _free_port, _python, api
from test_comfy_server import pytestmark  # noqa: F401  (skipped without COMFYUI_DIR)
from test_download import release  # noqa: F401  (the served files)

RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def drive(release):  # noqa: F811
    stand_in = DriveStandIn()
    for key, path in release.items():
        if key in (CHECKPOINT, CLASSIFIER, LATENT_STATS):
            stand_in.add(key.drive_id, key.name.rsplit("/", 1)[-1], path)
    server = serve(stand_in)
    yield stand_in
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, drive):
    """ComfyUI with only this pack, no DVA model files, and the stand-in as its Google Drive."""
    root = tmp_path_factory.mktemp("comfy_download")
    base, packs = root / "base", root / "packs"
    (base / "custom_nodes").mkdir(parents=True)
    packs.mkdir()
    (packs / "ComfyUI-DVA").symlink_to(REPO)
    port = _free_port()
    log = open(root / "comfy.log", "w")
    command = [_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--base-directory", str(base)]
    paths = root / "extra_model_paths.yaml"
    paths.write_text(f"dva_download_test:\n  custom_nodes: {packs}\n")
    command += ["--extra-model-paths-config", str(paths)]
    process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, DRIVE_URL_ENV: drive.url})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url + "/system_stats", timeout=5).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not start:\n{(root / 'comfy.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, base / "models" / "dva"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _prompt(download: bool) -> dict:
    return {
        "1": {"class_type": "DVAModelLoader", "inputs": {"checkpoint": CONVERTED_MODEL, "precision": "fp32",
                                                         "device": "cpu", "download_if_missing": download}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "3": {"class_type": "DVAClassifierLoader", "inputs": {"classifier": CLASSIFIER.name,
                                                              "latent_stats": LATENT_STATS.name,
                                                              "download_if_missing": download}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loaders_fetch_missing_files_only_when_asked(comfy, drive, release):  # noqa: F811
    server, models = comfy
    history = api.run_prompt(server, _prompt(download=False), timeout_s=RUN_TIMEOUT_S)
    with pytest.raises(api.WorkflowError) as error:
        api.check_success(history)
    message = str(error.value)
    assert "turn on download_if_missing in this loader or run `python -m dva_model download --what dva --to" in message
    assert "Traceback" not in message and drive.requests == []

    events = []
    history = api.run_prompt(server, _prompt(download=True), timeout_s=RUN_TIMEOUT_S,
                             on_message=lambda kind, data: events.append((kind, data)))
    api.check_success(history)
    for release_file in (CHECKPOINT, CLASSIFIER, LATENT_STATS):
        assert _sha256(models / release_file.name) == _sha256(release[release_file])
    assert (models / CONVERTED_MODEL).is_file()
    manifest = json.loads((models / MANIFEST_NAME).read_text())["files"]
    assert {CHECKPOINT.name, CONVERTED_MODEL, CLASSIFIER.name, LATENT_STATS.name} == set(manifest)
    progress = {data.get("node"): data for kind, data in events if kind == "progress"}
    size = release[CHECKPOINT].stat().st_size
    assert progress["1"]["max"] == size and progress["1"]["value"] == size  # the bar ends full
    assert not list(models.rglob("*.part"))
