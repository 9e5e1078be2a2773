"""A real ComfyUI server with only this pack: /object_info, the shipped API workflow, caching, cancel.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout (main.py). The server runs with
COMFYUI_PYTHON (default: <COMFYUI_DIR>/../venv/bin/python when it exists, else this interpreter),
on the CPU, on a free port, with its own base directory; the pack and a models/dva folder come in
through an extra_model_paths.yaml (so that route is exercised too). The checkpoint is a tiny random
model in the released Lightning format, the clip a real talking-face video. DVA_SERVER_TEST_FRAMES
sets how many frames to edit (default 4; 0 = the whole clip).
"""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from test_nodes import PACK_NODES
from test_workflows import CORE_NODES, WORKFLOWS, _release_classifier, check_api_workflow

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 3600
STEPS = 2  # DDIM steps: one inversion call and two decoding calls per frame batch
# attribute edit, decode, paste back, save video, previews of the edited crops and the paste mask
EDIT_NODES = {"7", "8", "9", "11", "13", "14"}

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
    reason="set COMFYUI_DIR to a ComfyUI checkout to run the real-server tests",
)

sys.path.insert(0, str(REPO))
from tools import comfy_server, run_workflow as api  # noqa: E402


def _python() -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = Path(COMFYUI_DIR).resolve().parent / "venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


@pytest.fixture(scope="module")
def server_process(tmp_path_factory, tiny_checkpoint):
    """Start ComfyUI with only this pack; yields (its URL, its log file); stops it afterwards."""
    root = tmp_path_factory.mktemp("comfy")
    base, packs, models = root / "base", root / "packs", root / "dva_models"
    for folder in (base / "custom_nodes", packs, models / "diffusion_video_autoencoder"):
        folder.mkdir(parents=True)
    (packs / "ComfyUI-DVA").symlink_to(REPO)
    (models / "diffusion_video_autoencoder" / "epoch=51-step=1000000.ckpt").symlink_to(tiny_checkpoint)
    _release_classifier(models / "diffusion_video_autoencoder_cls" / "last.ckpt")
    paths = root / "extra_model_paths.yaml"
    paths.write_text(f"dva_test:\n  custom_nodes: {packs}\n  dva: {models}\n")
    with running_comfyui(root, base, paths) as url:
        yield url, root / "comfy.log"


@contextlib.contextmanager
def running_comfyui(root: Path, base: Path, paths: Path, env: Optional[dict] = None):
    """Start ComfyUI (base folder ``base``, extra paths ``paths``, log in ``root``); yield its URL; stop it."""
    with comfy_server.running_comfyui(Path(COMFYUI_DIR), _python(), base=base, paths=paths, log=root / "comfy.log",
                                      startup_timeout_s=STARTUP_TIMEOUT_S, env=env) as started:
        yield started.url


@pytest.fixture(scope="module")
def server(server_process):
    return server_process[0]


@pytest.fixture(scope="module")
def object_info(server):
    return api.get_json(server, "/object_info")


@pytest.fixture(scope="module")
def prompt(server):
    """The shipped API workflow pointed at an uploaded real clip, with a short selection and 2 steps."""
    from media import single_face_video

    workflow = json.loads((WORKFLOWS / "api" / "attribute_edit.json").read_text())
    api.set_video(workflow, api.upload(server, single_face_video()))
    frames = int(os.environ.get("DVA_SERVER_TEST_FRAMES", "4"))
    api.set_inputs(workflow, [f"frame_cap={frames}", f"steps={STEPS}", "start_frame=0"])
    return workflow


def _expected_frames() -> int:
    from dva_model.formats.video import probe
    from media import single_face_video

    frames = int(os.environ.get("DVA_SERVER_TEST_FRAMES", "4"))
    total = probe(single_face_video()).frame_count
    return total if frames == 0 else min(frames, total)


def _run(server, prompt):
    events = []
    history = api.run_prompt(server, prompt, timeout_s=RUN_TIMEOUT_S,
                             on_message=lambda kind, data: events.append((kind, data)))
    return history, events


def test_object_info_lists_every_pack_node_as_declared(object_info, comfy_host):
    from test_workflows import pack_info

    assert PACK_NODES <= set(object_info)
    ours = pack_info()
    for name in PACK_NODES:
        served = object_info[name]
        assert served["category"] == ours[name]["category"] and served["output"] == ours[name]["output"], name
        assert served["output_is_list"] == ours[name]["output_is_list"], name  # Pick Face gives lists
        assert served["category"].startswith("DVA/") and served["display_name"] == ours[name]["display_name"], name
        sections = ("required", "optional")  # V3 adds a "hidden" section (prompt, workflow) to output nodes
        assert {k: served["input_order"].get(k) for k in sections} == \
            {k: ours[name]["input_order"].get(k) for k in sections}, name
    for name, declared in CORE_NODES.items():
        served = object_info[name]
        assert served["output"] == declared["output"], name
        for section in ("required", "optional"):
            assert served["input_order"].get(section) == declared["input_order"].get(section), name
        for section, inputs in declared["input"].items():
            for input_name, spec in inputs.items():
                assert served["input"][section][input_name][0] == spec[0], f"{name}.{input_name}"


def test_shipped_workflow_returns_a_video_of_the_input_frame_count_and_size(server, object_info, prompt, tmp_path):
    from dva_model.formats.video import probe
    from media import single_face_video

    assert check_api_workflow(prompt, object_info) == []
    history, events = _run(server, prompt)
    api.check_success(history)
    (video,) = api.output_files(history)
    result = probe(api.download(server, video, tmp_path / "edited.mp4"))
    source = probe(single_face_video())
    assert result.frame_count == _expected_frames()
    assert (result.width, result.height) == (source.width, source.height)
    assert float(result.fps) == pytest.approx(float(source.fps), rel=1e-3) and result.has_audio
    progress_nodes = {data.get("node") for kind, data in events if kind == "progress"}
    assert {"4", "8"} <= progress_nodes, "encode and decode must report progress"


def test_changing_only_the_edit_scale_reruns_only_edit_decode_and_paste(server, prompt):
    prompt = json.loads(json.dumps(prompt))
    prompt["7"]["inputs"]["scale"] = -0.3
    history, events = _run(server, prompt)
    api.check_success(history)
    executed = {data["node"] for kind, data in events if kind == "executing" and data.get("node")}
    assert executed == EDIT_NODES
    assert set(api.cached_nodes(history)) == set(prompt) - EDIT_NODES


def test_a_node_error_comes_back_as_one_sentence(server, prompt):
    prompt = json.loads(json.dumps(prompt))
    prompt["7"]["inputs"]["custom_attribute"] = "Mustash"
    history, _ = _run(server, prompt)
    with pytest.raises(api.WorkflowError) as error:
        api.check_success(history)
    message = str(error.value)
    assert "node 7 (DVAAttributeEdit) failed" in message and "Unknown attribute 'Mustash'. Did you mean Mustache?" in message
    assert "Traceback" not in message


def test_cancel_stops_decoding_within_one_unet_call(server, prompt):
    prompt = json.loads(json.dumps(prompt))
    prompt["7"]["inputs"]["scale"] = 0.6  # only edit, decode and paste re-run
    prompt["8"]["inputs"]["frames_per_call"] = 1  # one UNet call per frame and step: frames x steps calls
    calls = _expected_frames() * STEPS
    client = os.urandom(8).hex()
    ws = api.WebSocket(server, client)
    try:
        prompt_id = api.submit(server, prompt, client)
        seen_at_cancel, values, outcome = None, [], None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while outcome is None and time.monotonic() < deadline:
            message = ws.receive()
            if message is None:
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "progress" and data.get("node") == "8":
                values.append(data["value"])
                if seen_at_cancel is None:
                    seen_at_cancel = data["value"]
                    api.post_json(server, "/interrupt", {})
            if kind in api.DONE_EVENTS:
                outcome = kind
    finally:
        ws.close()
    assert outcome == "execution_interrupted", "Cancel did not stop the decoding"
    assert seen_at_cancel is not None and seen_at_cancel + 1 < calls
    assert max(values) <= seen_at_cancel + 1, f"{max(values) - seen_at_cancel} UNet calls ran after Cancel"


def test_the_model_comes_back_after_comfyui_unloads_it(server_process, prompt):
    server, log = server_process
    loads_before = log.read_text().count("Requested to load DVAModel")
    api.post_json(server, "/free", {"unload_models": True})  # honoured after the next prompt
    for scale in (0.1, 0.2):  # the first run triggers the unload, the second must load the model again
        edited = json.loads(json.dumps(prompt))
        edited["7"]["inputs"]["scale"] = scale
        history, _ = _run(server, edited)
        api.check_success(history)
    assert log.read_text().count("Requested to load DVAModel") > loads_before


def test_run_workflow_script_uploads_runs_and_downloads(server, prompt, tmp_path):
    from dva_model.formats.video import probe
    from media import single_face_video

    api.check_success(_run(server, prompt)[0])  # the clip is aligned and inverted on the server already
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(prompt))
    out = tmp_path / "out.mp4"
    command = [sys.executable, str(REPO / "tools" / "run_workflow.py"), str(workflow), "--server", server,
               "--video", str(single_face_video()), "--set", "7.scale=0.35", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cached (not re-run): 1, 2, 3, 4, 5, 6" in result.stderr, "re-uploading the same clip must keep the cache"
    assert probe(out).frame_count == _expected_frames()
    bad = subprocess.run(command[:5] + ["--set", "no_such_input=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no node has a widget input named 'no_such_input'" in bad.stderr


def test_long_clip_workflow_streams_core_load_video_to_core_save_video(server, tmp_path):
    """The shipped long-clip graph as shipped (core Load Video -> DVA Face Align's VIDEO input -> file-backed
    DVA Encode -> DVA Decode + Paste to Video -> core Save Video) on a real 8-frame clip with its audio:
    every frame comes back at the source's size and rate, with the audio of those frames and each face
    pasted back where it was."""
    import av
    import numpy as np

    import torch

    from dva_model.formats.video import FrameSelection, VideoWriter, audio_window, frame_times, iter_frames, probe
    from media import single_face_video

    frames, source = 8, probe(single_face_video())
    clip = tmp_path / "eight_frames.mp4"
    (_, pixels), = iter_frames(single_face_video(), selection=FrameSelection(max_frames=frames), chunk_size=frames,
                               dtype=torch.uint8)
    window = audio_window(source, range(frames), frame_times(single_face_video()))
    with VideoWriter(clip, fps=source.fps, width=source.width, height=source.height,
                     audio_from=single_face_video(), audio_window_s=window, lossless=True) as writer:
        writer.write(pixels)
    workflow = json.loads((WORKFLOWS / "api" / "long_clip_edit.json").read_text())
    api.set_video(workflow, api.upload(server, clip))
    api.set_inputs(workflow, [f"steps={STEPS}"])
    history, _ = _run(server, workflow)
    api.check_success(history)
    (video,) = api.output_files(history)
    out = api.download(server, video, tmp_path / "edited.mp4")
    result = probe(out)
    assert result.frame_count == frames and (result.width, result.height) == (source.width, source.height)
    assert result.has_audio and float(result.fps) == pytest.approx(float(source.fps), rel=1e-3)
    with av.open(str(out)) as container:
        (audio,) = container.streams.audio
        seconds = float(audio.duration * audio.time_base) if audio.duration else float(container.duration) / 1e6
    assert seconds == pytest.approx(frames / float(source.fps), abs=0.1), "the audio of those frames"
    (_, edited), = iter_frames(out, chunk_size=frames, dtype=torch.uint8)
    difference = (edited.float() - pixels.float()).abs().amax(dim=-1).numpy()  # [8, H, W] levels
    # A random model's inversion round trip nearly reconstructs the face, so a face pasted into the wrong
    # frame or place would stand out: every frame must match its source up to the codec and that round trip.
    assert np.median(difference) <= 3, "outside the face the frames are the source's (up to the codec)"
    assert np.percentile(difference, 99.9, axis=(1, 2)).max() <= 24, "each face pasted back where it was"


def test_every_face_workflow_edits_each_person_of_a_real_clip_on_the_real_executor(server, tmp_path):
    """The shipped every-face graph as shipped: Face Tracks on a core VIDEO, Pick Face 'all' (a list), the
    chain run once per person by ComfyUI's own list mapping, and one Decode + Paste to Video for all of them."""
    import torch

    from dva_model.formats.video import FrameSelection, VideoWriter, iter_frames, probe
    from media import multi_face_pan_video

    frames, source = 3, probe(multi_face_pan_video())
    clip = tmp_path / "four_people.mp4"
    (_, pixels), = iter_frames(multi_face_pan_video(), selection=FrameSelection(max_frames=frames),
                               chunk_size=frames, dtype=torch.uint8)
    with VideoWriter(clip, fps=source.fps, width=source.width, height=source.height, lossless=True) as writer:
        writer.write(pixels)
    workflow = json.loads((WORKFLOWS / "api" / "every_face_edit.json").read_text())
    api.set_video(workflow, api.upload(server, clip))
    api.set_inputs(workflow, [f"steps={STEPS}", "frames_per_call=4"])
    history, events = _run(server, workflow)
    api.check_success(history)
    outputs = history["outputs"]
    assert len(outputs["12"]["images"]) == frames, "the numbered track preview"
    assert len(outputs["14"]["images"]) == 4 * frames, "Pick Face 'all': four people, their crops each"
    (video,) = api.output_files(history)
    result = probe(api.download(server, video, tmp_path / "edited.mp4"))
    assert (result.frame_count, result.width, result.height) == (frames, source.width, source.height)
    # The render counts UNet calls over every person: 4 people x 1 batch x STEPS calls.
    decoded = [data["value"] for kind, data in events if kind == "progress" and data.get("node") == "8"]
    assert max(decoded) == 4 * STEPS and {data["max"] for kind, data in events
                                          if kind == "progress" and data.get("node") == "8"} == {4 * STEPS}


def test_core_load_video_to_core_save_video_keeps_audio_and_frame_count(server, object_info, prompt, tmp_path):
    """Core Load Video -> DVA Video Load (source_video) -> ... -> Paste Back's VIDEO -> core Save Video.

    Last in this module: it changes the loader's inputs, so ComfyUI's cache of the shipped graph is gone after it.
    """
    from dva_model.formats.video import probe
    from media import single_face_video

    prompt = json.loads(json.dumps(prompt))
    prompt["20"] = {"class_type": "LoadVideo", "inputs": {"file": prompt["2"]["inputs"]["video"]}}
    prompt["2"]["inputs"]["source_video"] = ["20", 0]
    prompt["2"]["inputs"]["video"] = "not_uploaded.mp4"  # the connected VIDEO is read, not the file
    assert object_info["LoadVideo"]["output"] == ["VIDEO"] and prompt["11"]["inputs"]["video"] == ["9", 2]
    history, _ = _run(server, prompt)
    api.check_success(history)
    (video,) = api.output_files(history)
    result = probe(api.download(server, video, tmp_path / "edited.mp4"))
    source = probe(single_face_video())
    assert result.frame_count == _expected_frames() and (result.width, result.height) == (source.width, source.height)
    assert result.has_audio and float(result.fps) == pytest.approx(float(source.fps), rel=1e-3)
    import av

    with av.open(str(tmp_path / "edited.mp4")) as container:
        (audio,) = container.streams.audio
        seconds = float(audio.duration * audio.time_base) if audio.duration else float(container.duration) / 1e6
    assert seconds == pytest.approx(_expected_frames() / float(source.fps), abs=0.1), "the audio of those frames"
