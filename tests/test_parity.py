"""Parity with the authors' reference implementation (tools/parity/).

The end-to-end test runs only when ``DVA_REFERENCE_DIR`` points at a checkout of
gmkim-ai/Diffusion-Video-Autoencoders (e.g. ``git --git-dir=<mirror> archive HEAD | tar -x -C DIR``); it is
skipped otherwise. It builds a random checkpoint in the release's Lightning layout, aligns real face frames
with the reference's own code, runs the reference's editing path at 10 DDIM steps (fp32, CPU), then runs
our CLI on the same files and requires z_id, z_lnd, x_T (1e-3 relative) and the decoded crops, plain and
with a Mustache +0.25 classifier edit (2/255), to match. It takes minutes on two cores. Set
``DVA_PARITY_OUT`` to a folder to keep (and reuse) the reference's outputs between runs, and
``DVA_PARITY_UNET_MODE`` (e.g. ``compile+channels-last``) to check one of our faster UNet paths.

The small tests below check the harness's own pass/fail logic, so a broken comparison cannot pass.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "tools" / "parity"
sys.path.insert(0, str(PARITY))

import compare  # noqa: E402


def test_pixel_check_fails_beyond_two_levels():
    reference = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    close, far = reference.copy(), reference.copy()
    close[0, 0, 0, 0] = 102
    far[1, 3, 3, 2] = 97
    assert compare.pixel_check("close", close, reference).passed
    assert not compare.pixel_check("far", far, reference).passed
    assert not compare.pixel_check("shape", close[:1], reference).passed


def test_check_rejects_nan_and_shape_mismatch():
    import torch

    assert not compare.Check("nan", float("nan"), 1.0, "abs").passed
    assert compare.max_abs(torch.zeros(2, 3), torch.zeros(3, 2)) == float("inf")
    assert compare.Check("exact", compare.max_abs(torch.ones(2), torch.ones(2)), 0.0, "abs").passed


@pytest.mark.skipif(not os.environ.get("DVA_REFERENCE_DIR"),
                    reason="set DVA_REFERENCE_DIR to a checkout of the DVA reference to run the parity check")
def test_cli_matches_reference(tmp_path):
    from parity_media import MediaUnavailable, single_face_clip

    try:
        single_face_clip()
    except MediaUnavailable as error:
        pytest.skip(f"no face video: {error}")
    out = Path(os.environ.get("DVA_PARITY_OUT") or tmp_path / "reference")
    python = sys.executable
    subprocess.run([python, str(PARITY / "make_reference.py"), "--reference", os.environ["DVA_REFERENCE_DIR"],
                    "--out", str(out)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    mode = os.environ.get("DVA_PARITY_UNET_MODE", "eager")
    result = subprocess.run([python, str(PARITY / "compare.py"), "--reference-out", str(out),
                             "--work", str(tmp_path / "ours"), "--unet-mode", mode],
                            cwd=REPO, capture_output=True, text=True)
    report = json.loads((tmp_path / "ours" / "report.json").read_text())
    failed = [c for c in report["checks"] if not c["passed"]]
    assert result.returncode == 0 and not failed, result.stdout + result.stderr
    assert {c["name"] for c in report["checks"]} >= {"z_id", "z_lnd", "x_T", "decoded crops"}
    assert report["unet_mode"] == mode
