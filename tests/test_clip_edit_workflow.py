"""The CLIP-edit example workflow: declared-node checks for both formats, and an in-process run on a real clip.

Uses the checks and the in-process runner of tests/test_workflows.py; the CLIP-edit nodes are added to
the pack's mapping here in case this checkout does not register them yet.
"""

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")

from test_clip_edit import tiny_clip  # noqa: E402
from comfy_fakes import install  # noqa: E402
from test_workflows import (  # noqa: E402
    CORE_NODES, check_api_workflow, pack_info, run_in_process, shipped_prompt, strip_meta, ui_to_api,
)

from dva_model.testing import single_thread  # noqa: E402

WORKFLOWS = Path(__file__).resolve().parents[1] / "example_workflows"
CLIP_NODES = ("DVACLIPLoader", "DVACLIPEdit", "DVASaveIdentityDelta", "DVAApplyIdentityDelta", "DVALoadIdentityDelta")


@pytest.fixture
def clip_nodes(comfy_host, monkeypatch):
    import nodes
    from nodes import clip_edit

    for name in CLIP_NODES:
        monkeypatch.setitem(nodes.NODES_BY_ID, name, getattr(clip_edit, name))
    return comfy_host


def test_clip_edit_workflow_in_both_formats_matches_the_nodes(clip_nodes):
    info = {**pack_info(), **CORE_NODES}
    api = json.loads((WORKFLOWS / "api" / "clip_edit.json").read_text())
    assert check_api_workflow(api, info) == []
    workflow = json.loads((WORKFLOWS / "clip_edit.json").read_text())
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    assert workflow["last_node_id"] == max(node["id"] for node in workflow["nodes"])
    assert ui_to_api(workflow, info) == strip_meta(api)
    edit = api["7"]["inputs"]
    assert (edit["iterations"], edit["learning_rate"], edit["clip_weight"], edit["identity_weight"],
            edit["l1_weight"], api["9"]["inputs"]["scale"]) == (2000, 0.002, 3.0, 1.0, 5.0, 0.5)  # the published settings


def test_clip_edit_graph_runs_end_to_end_and_lowers_its_loss(clip_nodes, tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    from dva_model.edit.clip_edit import load_delta
    from dva_model.edit.identity import apply_delta
    from dva_model.formats.video import probe
    from media import single_face_video

    prompt = shipped_prompt("clip_edit.json", clip_nodes, tiny_checkpoint)
    dva = clip_nodes.models / "dva"
    weights = tmp_path / "ViT-B-16.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip(seed=5).state_dict().items()}, str(weights))
    prompt["6"]["inputs"]["weights"] = install(weights, dva, "clip/ViT-B-16.safetensors")
    install(single_face_video(), clip_nodes.input, prompt["2"]["inputs"]["video"])
    prompt["2"]["inputs"].update(start_frame=30, frame_cap=2)
    prompt["4"]["inputs"]["steps"] = 2
    prompt["7"]["inputs"]["iterations"] = 4

    with single_thread():
        results = run_in_process(prompt)

    latent = results["4"][0]
    (delta,) = results["7"]
    (identity,) = results["9"]
    (saved,) = results["8"].ui["files"]
    (summary,) = results["8"].ui["text"]
    stored = load_delta(clip_nodes.output / saved["subfolder"] / saved["filename"])
    assert torch.equal(stored.delta, delta.delta) and stored.target_text == "face with beard"
    start, end = stored.info["loss_start"], stored.info["loss_end"]
    assert math.isfinite(start) and end < start, f"the CLIP edit did not lower its loss: {summary}"
    assert summary.endswith(f"loss {start:.4f} -> {end:.4f}")
    torch.testing.assert_close(identity.edited(), apply_delta(latent.identity, delta, scale=0.5))
    assert results["10"][0].shape == (2, 256, 256, 3)
    (video,) = results["13"].ui["images"]
    written = probe(clip_nodes.output / video["subfolder"] / video["filename"])
    assert (written.frame_count, written.width, written.height) == (2, 640, 360)
