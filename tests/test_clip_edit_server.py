"""The shipped CLIP-edit API workflow on a real ComfyUI server, with local tiny weights.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout (see tests/test_comfy_server.py, whose server
fixture this reuses). The server finds CLIP where the workflow's default looks, ``~/.cache/clip/
ViT-B-16.pt``: a tiny random CLIP saved there as a TorchScript archive, like OpenAI's file, under a
temporary HOME. Its Python needs open-clip-torch.
"""

import json
import re

import pytest
import torch

pytest.importorskip("open_clip")

from test_clip_edit import CLIP_IMAGE_SIZE, tiny_clip  # noqa: E402
from test_comfy_server import (  # noqa: E402,F401  (fixtures used by name)
    COMFYUI_DIR, RUN_TIMEOUT_S, api, object_info, pytestmark, server, server_process,
)
from test_workflows import WORKFLOWS, check_api_workflow  # noqa: E402

ITERATIONS = 4


@pytest.fixture(scope="module", autouse=True)
def cached_clip_home(tmp_path_factory):
    """HOME with a tiny CLIP in the local CLIP cache, for this process and the server it starts."""
    home = tmp_path_factory.mktemp("home")
    target = home / ".cache" / "clip" / "ViT-B-16.pt"
    target.parent.mkdir(parents=True)
    example = torch.zeros(1, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    torch.jit.trace_module(tiny_clip(seed=7), {"encode_image": (example,)}, check_trace=False).save(str(target))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        yield target


def test_clip_edit_workflow_runs_and_lowers_its_loss(server, object_info, tmp_path):
    from dva_model.edit.clip_edit import load_delta
    from dva_model.formats.video import probe
    from media import single_face_video

    prompt = json.loads((WORKFLOWS / "api" / "clip_edit.json").read_text())
    api.set_video(prompt, api.upload(server, single_face_video()))
    api.set_inputs(prompt, ["frame_cap=2", "steps=2", "start_frame=0", f"iterations={ITERATIONS}"])
    assert check_api_workflow(prompt, object_info) == []
    events = []
    history = api.run_prompt(server, prompt, timeout_s=RUN_TIMEOUT_S,
                             on_message=lambda kind, data: events.append((kind, data)))
    api.check_success(history)

    (summary,) = history["outputs"]["8"]["text"]
    start, end = (float(v) for v in re.search(r"loss (\S+) -> (\S+)$", summary).groups())
    assert end < start, f"the CLIP edit did not lower its loss: {summary}"
    files = {item["filename"].rsplit(".", 1)[-1]: item for item in api.output_files(history)}
    delta = load_delta(api.download(server, files["safetensors"], tmp_path / "delta.safetensors"))
    assert delta.info["iterations"] == ITERATIONS and delta.info["loss_end"] == pytest.approx(end, abs=1e-4)
    video = probe(api.download(server, files["mp4"], tmp_path / "edited.mp4"))
    assert (video.frame_count, video.width, video.height) == (2, 640, 360)
    edit_progress = [data["value"] for kind, data in events if kind == "progress" and data.get("node") == "7"]
    assert edit_progress[-ITERATIONS:] == list(range(1, ITERATIONS + 1)), "one progress step per iteration"

    # Another scale re-runs the apply node and what follows, never the optimisation (node 7).
    prompt["9"]["inputs"]["scale"] = 0.25
    events.clear()
    history = api.run_prompt(server, prompt, timeout_s=RUN_TIMEOUT_S,
                             on_message=lambda kind, data: events.append((kind, data)))
    api.check_success(history)
    executed = {data["node"] for kind, data in events if kind == "executing" and data.get("node")}
    assert executed == {"9", "10", "11", "13", "15", "16"}, executed
