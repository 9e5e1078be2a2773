"""Every shipped workflow is checked against the nodes' declared inputs and outputs, and runs.

- API format (example_workflows/api/*.json, what POST /prompt takes): class types exist, required inputs are
  set, links point at existing outputs of the right type, widget values are allowed.
- UI format (example_workflows/*.json, drag-and-drop / template browser): its links agree with its nodes'
  slots and it describes the same graph, with the same values, as its API twin.
- The attribute-edit graph runs end to end in-process (fake ComfyUI host, core video nodes replaced
  by stand-ins) on a real clip with a tiny random checkpoint in the released file format.
The same checks run against a real server's /object_info in tests/test_comfy_server.py.
"""

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from comfy_api_fake import NodeOutput, VideoFromFile
from comfy_fakes import install, run_listed

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "example_workflows"
API_FOLDER = WORKFLOWS / "api"
API_WORKFLOWS = sorted(API_FOLDER.glob("*.json"))
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # UI-only nodes, never sent to /prompt
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")
# Combos listing files of the user's folders: any name is allowed in a shipped workflow.
FILE_INPUTS = {("DVAModelLoader", "checkpoint"), ("DVAClassifierLoader", "classifier"),
               ("DVAClassifierLoader", "latent_stats"), ("DVAVideoLoad", "video"), ("DVALoadLatent", "latent_file"),
               ("LoadVideo", "file")}

# The core nodes the workflows use, as ComfyUI 0.3.6x's /object_info declares them (checked against a
# real server in tests/test_comfy_server.py).
CORE_NODES = {
    "LoadVideo": {
        "input": {"required": {"file": ["COMBO", {"options": [], "video_upload": True}]}},
        "input_order": {"required": ["file"]},
        "output": ["VIDEO"], "output_name": ["VIDEO"], "output_node": False,
    },
    "SaveVideo": {
        "input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                               "format": ["COMBO", {"options": ["auto", "mp4"]}],
                               "codec": ["COMBO", {"options": ["auto", "h264"]}]}},
        "input_order": {"required": ["video", "filename_prefix", "format", "codec"]},
        "output": [], "output_name": [], "output_node": True,
    },
    "PreviewImage": {
        "input": {"required": {"images": ["IMAGE", {}]}},
        "input_order": {"required": ["images"]},
        "output": [], "output_name": [], "output_node": True,
    },
    "MaskPreview": {
        "input": {"required": {"mask": ["MASK", {}]}},
        "input_order": {"required": ["mask"]},
        "output": [], "output_name": [], "output_node": True,
    },
}


def node_info(node) -> dict:
    """A V3 node class described as ComfyUI's /object_info describes it."""
    from comfy_api_fake import v1_info

    return v1_info(node)


def pack_info() -> dict:
    import nodes

    return {name: node_info(node) for name, node in nodes.NODES_BY_ID.items()}


def _kind(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 else {}


def _combo_values(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else _options(spec).get("options", [])


def _check_widget(class_type: str, name: str, spec, value) -> list:
    kind, options = _kind(spec), _options(spec)
    where = f"{class_type}.{name}={value!r}"
    if kind == "COMBO":
        if (class_type, name) not in FILE_INPUTS and value not in _combo_values(spec):
            return [f"{where} is not one of {_combo_values(spec)}"]
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
            return [f"{where} is not an {kind}"]
        if not options.get("min", value) <= value <= options.get("max", value):
            return [f"{where} is outside {options.get('min')}..{options.get('max')}"]
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        return [f"{where} is not a boolean"]
    elif kind == "STRING" and not isinstance(value, str):
        return [f"{where} is not a string"]
    return []


def check_api_workflow(prompt: dict, info: dict) -> list:
    """Problems of an API-format workflow against node declarations (/object_info layout); [] if none."""
    problems = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if class_type not in info:
            problems.append(f"node {node_id}: unknown class_type {class_type!r}")
            continue
        declared = {**info[class_type]["input"].get("required", {}), **info[class_type]["input"].get("optional", {})}
        for name in info[class_type]["input"].get("required", {}):
            if name not in node["inputs"]:
                problems.append(f"node {node_id} ({class_type}): required input {name!r} is missing")
        for name, value in node["inputs"].items():
            if name not in declared:
                problems.append(f"node {node_id} ({class_type}): unknown input {name!r}")
            elif isinstance(value, list):
                source, slot = value
                if source not in prompt or prompt[source]["class_type"] not in info:
                    problems.append(f"node {node_id}.{name}: links to missing node {source}")
                    continue
                outputs = info[prompt[source]["class_type"]]["output"]
                wanted = _kind(declared[name])
                if slot >= len(outputs):
                    problems.append(f"node {node_id}.{name}: node {source} has no output {slot}")
                elif wanted != "*" and outputs[slot] != wanted:
                    problems.append(f"node {node_id}.{name}: expects {wanted}, linked to a {outputs[slot]}")
            elif _kind(declared[name]) in WIDGET_TYPES:
                problems.extend(f"node {node_id}: {p}" for p in _check_widget(class_type, name, declared[name], value))
            else:
                problems.append(f"node {node_id}.{name}: a {_kind(declared[name])} input needs a link")
    if not problems and topological_order(prompt) is None:
        problems.append("the graph has a cycle")
    return problems


def topological_order(prompt: dict):
    """Node ids with every node after the nodes it reads from, or None for a cyclic graph."""
    order, state = [], {}

    def visit(node_id) -> bool:
        if state.get(node_id) == "done":
            return True
        if state.get(node_id) == "open":
            return False
        state[node_id] = "open"
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and not visit(value[0]):
                return False
        state[node_id] = "done"
        order.append(node_id)
        return True

    return order if all(visit(node_id) for node_id in sorted(prompt, key=int)) else None


def ui_to_api(workflow: dict, info: dict) -> dict:
    """The API-format graph a UI-format workflow stands for (checking its slots on the way)."""
    links = {link[0]: link for link in workflow["links"]}
    by_id = {node["id"]: node for node in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        spec = info[node["type"]]
        inputs, values = {}, list(node.get("widgets_values", []))
        slots = {entry["name"]: (index, entry) for index, entry in enumerate(node.get("inputs", []))}
        uploads = 0
        for section in ("required", "optional"):
            for name in spec["input_order"].get(section, []):
                declared = spec["input"][section][name]
                if _kind(declared) in WIDGET_TYPES:
                    assert values, f"UI node {node['id']} ({node['type']}) has too few widget values"
                    inputs[name] = values.pop(0)
                    uploads += any(_options(declared).get(flag) for flag in UPLOAD_FLAGS)
                if name in slots and slots[name][1].get("link") is not None:
                    index, entry = slots[name]
                    link_id, source, source_slot, target, target_slot, kind = links[entry["link"]]
                    assert (target, target_slot) == (node["id"], index), f"link {link_id} does not end at its slot"
                    assert link_id in (by_id[source]["outputs"][source_slot]["links"] or []), f"link {link_id} not on its output"
                    assert kind == by_id[source]["outputs"][source_slot]["type"] == spec_output(info, by_id[source], source_slot)
                    inputs[name] = [str(source), source_slot]
        # The frontend adds an upload button after all the node's inputs and stores its value last.
        assert values == ["image"] * uploads, f"UI node {node['id']} ({node['type']}) has extra widget values {values}"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def spec_output(info: dict, node: dict, slot: int) -> str:
    return info[node["type"]]["output"][slot]


def strip_meta(prompt: dict) -> dict:
    return {node_id: {"class_type": node["class_type"], "inputs": node["inputs"]} for node_id, node in prompt.items()}


# ------------------------------------------------------------------------------------------------


def test_every_workflow_comes_in_both_formats():
    assert [p.name for p in API_WORKFLOWS] == [p.name for p in UI_WORKFLOWS]
    assert "attribute_edit.json" in [p.name for p in UI_WORKFLOWS]


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_matches_the_declared_nodes(comfy_host, path):
    prompt = json.loads(path.read_text())
    assert check_api_workflow(prompt, {**pack_info(), **CORE_NODES}) == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_is_the_same_graph_as_its_api_twin(comfy_host, path):
    workflow = json.loads(path.read_text())
    info = {**pack_info(), **CORE_NODES}
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    assert workflow["last_node_id"] == max(node["id"] for node in workflow["nodes"])
    api = strip_meta(json.loads((WORKFLOWS / "api" / path.name).read_text()))
    assert ui_to_api(workflow, info) == api


def test_the_checker_catches_a_mistyped_link_and_a_bad_value(comfy_host):
    prompt = json.loads((WORKFLOWS / "api" / "attribute_edit.json").read_text())
    info = {**pack_info(), **CORE_NODES}
    prompt["8"]["inputs"]["identity"] = ["4", 0]  # a DVA_LATENT where a DVA_IDENTITY belongs
    prompt["9"]["inputs"]["mask_preset"] = "everything"
    prompt["4"]["inputs"]["steps"] = 5000
    problems = check_api_workflow(prompt, info)
    assert any("expects DVA_IDENTITY, linked to a DVA_LATENT" in p for p in problems), problems
    assert any("mask_preset='everything'" in p for p in problems) and any("steps=5000" in p for p in problems)


# ------------------------------------------------------------------------------------------------
# The graph, end to end, in-process


class _SaveVideo:
    """Stand-in for core SaveVideo: writes a VIDEO's frames as MP4 with the library's writer."""

    @classmethod
    def execute(cls, video, filename_prefix, format, codec):
        import folder_paths
        from dva_model.formats.video import write_video

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        path = Path(folder) / f"{name}_{counter:05}_.mp4"
        if isinstance(video, VideoFromFile):  # a file already: copied, as core Save Video remuxes it
            import shutil

            shutil.copyfile(video.get_stream_source(), path)
            return NodeOutput(ui={"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}]})
        components = video.get_components()
        write_video(path, components.images, fps=Fraction(components.frame_rate).limit_denominator(1001))
        return NodeOutput(ui={"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}],
                              "video": [components]})


class _LoadVideo:
    """Stand-in for core Load Video: a VIDEO naming an input-folder file (decoded by whoever reads it)."""

    @classmethod
    def execute(cls, file):
        import folder_paths

        return NodeOutput(VideoFromFile(folder_paths.get_annotated_filepath(file)))


class _Preview:
    """Stand-in for core PreviewImage / MaskPreview: reports what it was shown."""

    @classmethod
    def execute(cls, images=None, mask=None):
        return NodeOutput(ui={"shown": [images if mask is None else mask]})


def run_in_process(prompt: dict) -> dict:
    """Execute an API-format workflow the way ComfyUI does, node by node, lists included (``run_listed``);
    returns every node's ``Outputs``."""
    import nodes

    classes = {**nodes.NODES_BY_ID, "SaveVideo": _SaveVideo, "LoadVideo": _LoadVideo,
               "PreviewImage": _Preview, "MaskPreview": _Preview}
    results = {}
    for node_id in topological_order(prompt):
        node = prompt[node_id]
        inputs = {name: results[value[0]].lists[value[1]] if isinstance(value, list) else [value]
                  for name, value in node["inputs"].items()}
        with torch.inference_mode():  # as ComfyUI runs every node
            results[node_id] = run_listed(classes[node["class_type"]], inputs)
    return results


def _release_classifier(path: Path) -> Path:
    """A random attribute classifier in the release's Lightning layout (last.ckpt)."""
    generator = torch.Generator().manual_seed(11)
    state = {"classifier.weight": torch.randn(40, 512, generator=generator),
             "classifier.bias": torch.randn(40, generator=generator),
             "conds_mean": torch.randn(1, 512, generator=generator) * 0.01,
             "conds_std": torch.rand(1, 512, generator=generator) * 0.05 + 0.02}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def shipped_prompt(name: str, host, checkpoint: Path) -> dict:
    """The shipped API workflow ``name`` with this test's model files under the names it asks for: the tiny
    checkpoint for every DVA Model Loader, a random release-layout classifier for every Classifier Loader."""
    prompt = json.loads((WORKFLOWS / "api" / name).read_text())
    dva = host.models / "dva"
    for node in prompt.values():
        if node["class_type"] == "DVAModelLoader":
            install(checkpoint, dva, node["inputs"]["checkpoint"])
        elif node["class_type"] == "DVAClassifierLoader":
            _release_classifier(dva / node["inputs"]["classifier"])
    return prompt


def test_attribute_edit_graph_runs_end_to_end_on_a_real_clip(comfy_host, tiny_checkpoint):
    from dva_model.formats.video import probe
    from media import single_face_video

    prompt = shipped_prompt("attribute_edit.json", comfy_host, tiny_checkpoint)
    install(single_face_video(), comfy_host.input, prompt["2"]["inputs"]["video"])
    prompt["2"]["inputs"].update(start_frame=30, frame_cap=2)
    prompt["4"]["inputs"]["steps"] = 2
    prompt["7"]["inputs"]["scale"] = 0.5

    results = run_in_process(prompt)

    frames, fps, audio, count = results["2"]
    faces, aligned = results["3"]
    edited_crops = results["8"][0]
    pasted, mask, video = results["9"]
    assert count == 2 and frames.shape == (2, 360, 640, 3) and fps == 30.0 and audio["sample_rate"] > 0
    assert faces.has_face.all() and aligned.shape == edited_crops.shape == (2, 256, 256, 3)
    assert pasted.shape == frames.shape and mask.shape == (2, 360, 640)
    outside = mask == 0
    assert outside.float().mean() > 0.5, "the face covers a small part of the frame"
    assert torch.equal(pasted[outside], frames[outside]), "pixels outside the paste mask must be the input's"
    assert (pasted - frames).abs().amax(dim=-1)[mask > 0.5].mean() > 1e-3, "the edited face was not pasted"
    components = video.get_components()
    assert components.images is pasted and components.audio is audio and components.frame_rate == 30
    latent = results["4"][0]
    assert latent.x_T.shape == (2, 3, 256, 256) and latent.steps == 2
    assert not torch.equal(results["7"][0].edited(), latent.identity), "scale 0.5 must change the identity"
    (shown,) = results["14"].ui["shown"]
    assert torch.equal(shown, mask), "the mask preview shows Paste Back's mask"
    (saved,) = results["11"].ui["images"]
    written = probe(comfy_host.output / saved["subfolder"] / saved["filename"])
    assert (written.frame_count, written.width, written.height) == (2, 640, 360)


def test_long_clip_graph_streams_from_the_video_file_to_a_video_file(comfy_host, tiny_checkpoint):
    """The streaming workflow: core Load Video -> Face Align (tracks only) -> Encode (a latent file in the
    temp folder, crops included) -> edit -> Decode + Paste to Video (an MP4 with the source's audio)."""
    from dva_model.formats.latent_io import StoredLatent
    from dva_model.formats.video import probe, write_video
    from media import decoded_frames, single_face_video

    prompt = shipped_prompt("long_clip_edit.json", comfy_host, tiny_checkpoint)
    write_video(comfy_host.input / prompt["2"]["inputs"]["file"], decoded_frames("single_face.mp4", 3),
                fps=Fraction(30), audio_from=single_face_video())
    prompt["4"]["inputs"]["steps"] = 2
    prompt["7"]["inputs"]["scale"] = 0.5

    results = run_in_process(prompt)

    faces, preview = results["3"]
    assert not hasattr(faces, "crops") and faces.has_face.all() and preview.shape == (3, 256, 256, 3)
    latent = results["4"][0]
    assert isinstance(latent, StoredLatent) and latent.path.parent.name == "dva"
    with latent.open() as file:
        assert file.frames == 3 and file.has_crops and file.steps == 2
    (video,) = results["8"]
    edited = probe(video.get_stream_source())
    assert (edited.frame_count, edited.width, edited.height, edited.has_audio) == (3, 640, 360, True)
    (saved,) = results["11"].ui["images"]
    assert probe(comfy_host.output / saved["subfolder"] / saved["filename"]).frame_count == 3

    from nodes.stream import DVADecodePasteVideo

    with pytest.raises(ValueError, match="streams from the video file"):
        DVADecodePasteVideo.execute(model=[results["1"][0]], latent=[latent], identity=[results["7"][0]],
                                    faces=[type("Clip", (), {"crops": None})()], mask_preset=["release"],
                                    union_edited=[False], dilate=[0], feather=[0.0], temporal_sigma=[0.0],
                                    composite=["frame"], frames_per_call=[0])


# ------------------------------------------------------------------------------------------------
# tools/run_workflow.py: the overrides it applies before posting


def test_run_workflow_overrides_inputs_and_points_loaders_at_the_video():
    import sys

    sys.path.insert(0, str(REPO))
    from tools.run_workflow import set_inputs, set_video

    prompt = json.loads((WORKFLOWS / "api" / "attribute_edit.json").read_text())
    set_video(prompt, "clip (1).mp4")
    set_inputs(prompt, ["scale=-0.4", "4.steps=20", "attribute=Young", "11.filename_prefix=out/x"])
    assert prompt["2"]["inputs"]["video"] == "clip (1).mp4"
    assert prompt["7"]["inputs"]["scale"] == -0.4 and prompt["7"]["inputs"]["attribute"] == "Young"
    assert prompt["4"]["inputs"]["steps"] == 20 and prompt["11"]["inputs"]["filename_prefix"] == "out/x"
    assert prompt["8"]["inputs"]["frames_per_call"] == 0
    with pytest.raises(ValueError, match="no node has a widget input named 'identity'"):
        set_inputs(prompt, ["identity=3"])  # a link, not a widget
    with pytest.raises(ValueError, match="not NAME=VALUE"):
        set_inputs(prompt, ["scale"])
