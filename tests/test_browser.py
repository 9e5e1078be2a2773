"""The shipped UI workflows in ComfyUI's real frontend, in headless Chromium, on a real server.

For every workflow in example_workflows/ the file is dropped onto the canvas (a DragEvent holding the
File, as a user's drop), and the page must recognise every node, hold in every widget the value the
file saved for it (the same named values as the workflow's API twin), and lay the nodes out without
one covering another. The model dropdowns are then pointed at this test's files (a tiny random
checkpoint in the released format, a random classifier) and the attribute edit runs to the end from
the Run button; the video it writes is checked.

Skips unless COMFYUI_DIR points at a ComfyUI checkout (as tests/test_comfy_server.py, whose server it
reuses), Chromium is installed (Debian's ``chromium``; or DVA_CHROMIUM=path) and Node.js can run
playwright-core (installed here from tests/browser/package-lock.json with ``npm ci`` when missing).
Screenshots go to $DVA_SCREENSHOT_DIR, else to pytest's temporary folder.
"""

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_comfy_server import (  # noqa: F401  (fixtures used by name)
    COMFYUI_DIR, RUN_TIMEOUT_S, api, pytestmark, server, server_process,
)
from test_workflows import API_FOLDER, FRONTEND_ONLY, UI_WORKFLOWS, _release_classifier

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "browser"
RUN_WORKFLOW = "attribute_edit.json"  # the one run to the end from the Run button
RUN_FRAMES = 2
STEPS = 2
TEST_CHECKPOINT = "browser_test/tiny_dva.ckpt"
TEST_CLASSIFIER = "browser_test/tiny_classifier.ckpt"
# Widgets the page adds that are not node inputs (the upload button, the video preview).
PAGE_ONLY_WIDGETS = {"upload", "video-preview", "$$canvas-image-preview"}


def _chromium():
    return os.environ.get("DVA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _playwright_ready() -> str:
    """'' when tests/browser can import playwright-core (installing it with npm ci if needed), else why not."""
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if (DRIVER / "node_modules" / "playwright-core").is_dir():
        return ""
    if shutil.which("npm") is None:
        return "npm is not installed (needed once to install playwright-core)"
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=DRIVER, capture_output=True, text=True)
    return "" if done.returncode == 0 else f"npm ci failed: {done.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def browser_ready():
    if _chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set DVA_CHROMIUM)")
    reason = _playwright_ready()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DVA_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def test_models(server_process, tiny_checkpoint):
    """This test's own model files beside the shipped names, for the dropdowns to be pointed at."""
    _, log = server_process
    models = log.parent / "dva_models"  # the server fixture's models/dva folder
    (models / TEST_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    (models / TEST_CHECKPOINT).symlink_to(tiny_checkpoint)
    _release_classifier(models / TEST_CLASSIFIER)


def _settings(video: str) -> dict:
    """Widget values the test sets in the page, by node type: its model files, a short clip, 2 steps."""
    return {
        "DVAModelLoader": {"checkpoint": TEST_CHECKPOINT},
        "DVAClassifierLoader": {"classifier": TEST_CLASSIFIER},
        "DVAVideoLoad": {"video": video, "frame_cap": RUN_FRAMES, "start_frame": 0},
        "DVAEncode": {"steps": STEPS},
    }


@pytest.fixture(scope="module")
def report(browser_ready, server, test_models, screenshots, tmp_path_factory):
    """What the page showed and did for every UI workflow (tests/browser/drive.mjs's report)."""
    from media import single_face_video

    video = api.upload(server, single_face_video())
    work = tmp_path_factory.mktemp("browser")
    config = {"url": server, "chromium": _chromium(), "screenshots": str(screenshots), "workflows": [
        {"path": str(path), "set": _settings(video), "run": path.name == RUN_WORKFLOW, "timeout_s": RUN_TIMEOUT_S}
        for path in UI_WORKFLOWS]}
    (work / "config.json").write_text(json.dumps(config))
    done = subprocess.run(["node", str(DRIVER / "drive.mjs"), str(work / "config.json"), str(work / "report.json")],
                          cwd=DRIVER, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 600)
    assert done.returncode == 0, f"the browser driver failed:\n{done.stderr[-4000:]}"
    workflows = json.loads((work / "report.json").read_text())["workflows"]
    return {Path(item["path"]).name: dict(item, video=video) for item in workflows}


def _page_node(result: dict, node_id: int) -> dict:
    (node,) = [n for n in result["loaded"]["nodes"] if n["id"] == node_id]
    return node


def _api_twin(name: str) -> dict:
    return json.loads((API_FOLDER / name).read_text())


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_dropped_workflow_loads_every_node(report, path):
    saved = json.loads(path.read_text())
    result = report[path.name]
    page_types = sorted((n["id"], n["type"]) for n in result["loaded"]["nodes"])
    assert page_types == sorted((n["id"], n["type"]) for n in saved["nodes"]), "the drop did not load the file"
    unknown = [n["type"] for n in result["loaded"]["nodes"] if not n["registered"] or n["has_errors"]]
    assert unknown == [], f"nodes the frontend does not know: {unknown}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_every_widget_holds_the_value_saved_for_it(report, path):
    """Each widget, by name, holds the file's value: the page's prompt equals the API twin."""
    saved = json.loads(path.read_text())
    result = report[path.name]
    twin = _api_twin(path.name)
    assert result["prompt_loaded"] == twin_for_page(twin), "the page reads other values than the file means"
    for node in saved["nodes"]:
        page = _page_node(result, node["id"])
        assert page["widgets_values"] == node.get("widgets_values", []), f"node {node['id']} lost values"
        for widget in page["widgets"]:
            if widget["type"] == "number":
                assert isinstance(widget["value"], (int, float)) and math.isfinite(widget["value"]), \
                    f"node {node['id']} ({node['type']}) {widget['name']} holds {widget['value']!r}"
        if node["type"] in FRONTEND_ONLY:
            continue
        for name, value in twin[str(node["id"])]["inputs"].items():
            if not isinstance(value, list):
                (widget,) = [w for w in page["widgets"] if w["name"] == name]
                assert widget["value"] == value, f"node {node['id']} ({node['type']}).{name}"


def twin_for_page(twin: dict) -> dict:
    """The API twin as graphToPrompt() writes it (it adds a _meta title to every node)."""
    return {node_id: {"inputs": node["inputs"], "class_type": node["class_type"], "_meta": node.get("_meta")}
            for node_id, node in twin.items()}


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_no_node_covers_another(report, path):
    boxes = [(n["id"], n["type"], n["bounding"]) for n in report[path.name]["loaded"]["nodes"]]
    overlaps = []
    for i, (id_a, type_a, (xa, ya, wa, ha)) in enumerate(boxes):
        for id_b, type_b, (xb, yb, wb, hb) in boxes[i + 1:]:
            if xa < xb + wb and xb < xa + wa and ya < yb + hb and yb < ya + ha:
                overlaps.append(f"{type_a} ({id_a}) and {type_b} ({id_b})")
    assert overlaps == [], f"nodes overlap on the canvas: {overlaps}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_the_model_dropdowns_take_the_tests_files(report, path):
    result = report[path.name]
    assert result["missing_widgets"] == []
    for node in result["prompt"].values():
        for name, value in _settings(result["video"]).get(node["class_type"], {}).items():
            assert node["inputs"][name] == value, f"{node['class_type']}.{name} was not set in the page"


def test_attribute_edit_runs_to_the_end_from_the_run_button(report, server, screenshots, tmp_path):
    from dva_model.formats.video import probe
    from media import single_face_video

    run = report[RUN_WORKFLOW]["run"]
    assert run["posted"] and run["posted"]["status"] == 200, f"the server refused the prompt: {run}"
    history = run["history"]
    assert history is not None, f"the run did not finish: {run['dialog']}"
    api.check_success(history)
    (video,) = [item for item in api.output_files(history) if item["filename"].endswith(".mp4")]
    result = probe(api.download(server, video, tmp_path / "edited.mp4"))
    source = probe(single_face_video())
    assert (result.frame_count, result.width, result.height) == (RUN_FRAMES, source.width, source.height)
    assert result.has_audio
    name = Path(RUN_WORKFLOW).stem
    for suffix in ("loaded.png", "set.png", "done.png"):
        assert (screenshots / f"{name}-{suffix}").stat().st_size > 10_000, f"no screenshot {suffix}"
