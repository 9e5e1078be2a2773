"""Bad options and hostile environments through the real CLI (issue 9, items 9-12).

Each case must end in one sentence on stderr, a nonzero exit status, no traceback and no file left
behind, and, where the case is about an option, before any alignment or model loading. "Before any
work" is shown by giving a video with no face and a checkpoint that does not exist: if the command got
as far as alignment or loading, the message would be about those instead.
Process-level behaviour (signals, exit codes, stderr) runs ``python -m dva_model`` in a subprocess.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from media import single_face_video
from dva_model.cli.main import main
from dva_model.edit.classifier import AttributeClassifier, edit_identity, save_directions
from dva_model.constants import CELEBA_ATTRIBUTES, ID_DIM
from dva_model.errors import UserError
from dva_model.formats.video import write_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def faceless(tmp_path):
    """A real (encoded) video with no face in it, and a checkpoint path that does not exist."""
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.uniform(0.3, 0.7, size=(4, 96, 128, 3)).astype(np.float32))
    return write_video(tmp_path / "wall.mp4", frames, fps=Fraction(25)), tmp_path / "never-loaded.ckpt"


def run_edit(video, checkpoint, out, *extra):
    return main(["--quiet", "edit", "--checkpoint", str(checkpoint), "--video", str(video), "--out", str(out),
                 "--steps", "2", "--device", "cpu", *extra])


def one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def directions(tmp_path, *, broken_row=None, value=float("nan")) -> Path:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(len(CELEBA_ATTRIBUTES), ID_DIM, generator=g)
    if broken_row is not None:
        weight[CELEBA_ATTRIBUTES.index(broken_row)] = value
    classifier = AttributeClassifier(weight=weight, mean=torch.zeros(ID_DIM), std=torch.ones(ID_DIM),
                                     attribute_names=CELEBA_ATTRIBUTES)
    return save_directions(tmp_path / "directions.safetensors", classifier)


# --- 9. NaN and infinite scales and weights --------------------------------------------------------

@pytest.mark.parametrize("scale", ["nan", "inf", "-inf"])
def test_non_finite_attribute_scale_is_refused_before_any_work(tmp_path, faceless, capsys, scale):
    video, checkpoint = faceless
    status = run_edit(video, checkpoint, tmp_path / "out.mp4", "--attribute", f"Mustache:{scale}",
                      "--classifier", str(directions(tmp_path)))
    err = one_sentence(capsys)
    assert status == 2 and "not a finite number" in err, err
    assert not (tmp_path / "out.mp4").exists()


def test_non_finite_delta_scale_and_mask_options_are_refused(tmp_path, faceless, capsys):
    video, checkpoint = faceless
    assert run_edit(video, checkpoint, tmp_path / "out.mp4", "--delta", f"{tmp_path / 'beard.safetensors'}:nan") == 2
    assert "not a finite number" in one_sentence(capsys)
    with pytest.raises(SystemExit) as stopped:  # argparse: usage line plus the message, status 2
        run_edit(video, checkpoint, tmp_path / "out.mp4", "--feather", "nan")
    assert stopped.value.code == 2 and "'nan' is not a finite number" in capsys.readouterr().err


def test_nan_direction_in_a_classifier_is_refused_before_alignment(tmp_path, faceless, capsys):
    video, checkpoint = faceless
    path = directions(tmp_path, broken_row="Mustache")
    status = run_edit(video, checkpoint, tmp_path / "out.mp4", "--attribute", "Mustache:0.25",
                      "--classifier", str(path))
    err = one_sentence(capsys)
    assert status == 2 and str(path) in err and "Mustache direction is not a finite vector" in err, err
    assert not (tmp_path / "out.mp4").exists()


def test_library_refuses_nan_scale_instead_of_returning_a_nan_identity():
    """What the nodes call: the old code returned an all-NaN identity (a black face) here."""
    g = torch.Generator().manual_seed(1)
    classifier = AttributeClassifier(weight=torch.randn(3, ID_DIM, generator=g), mean=torch.zeros(ID_DIM),
                                     std=torch.ones(ID_DIM), attribute_names=("A", "B", "C"))
    z_id = torch.randn(ID_DIM, generator=g)
    with pytest.raises(UserError, match="finite"):
        edit_identity(z_id, classifier, [("A", float("nan"))])
    broken = AttributeClassifier(weight=torch.zeros(3, ID_DIM), mean=torch.zeros(ID_DIM), std=torch.ones(ID_DIM),
                                 attribute_names=("A", "B", "C"))
    with pytest.raises(UserError, match="not a finite vector"):
        edit_identity(z_id, broken, [("A", 0.25)])  # a zero row normalises to NaN


# --- 10. Outputs that cannot be written --------------------------------------------------------------

def test_output_that_is_a_folder_is_refused_before_any_work(tmp_path, faceless, capsys):
    video, checkpoint = faceless
    folder = tmp_path / "taken.mp4"
    folder.mkdir()
    assert run_edit(video, checkpoint, folder) == 2
    err = one_sentence(capsys)
    assert f"Cannot write the output video {folder}: it is a folder" in err, err


def _read_only_folder(path: Path) -> Path:
    """A folder no file can be created in: chmod for a normal user, a read-only bind mount for root."""
    path.mkdir()
    os.chmod(path, 0o555)
    try:
        (path / ".probe").touch()
    except OSError:
        return path  # the permission bits are enough (not root)
    (path / ".probe").unlink()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode:
        pytest.skip("running as root and cannot make a read-only mount here")
    return path


@pytest.fixture
def read_only(tmp_path):
    path = _read_only_folder(tmp_path / "ro")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)
    os.chmod(path, 0o755)


def test_read_only_output_folder_is_refused_before_any_work(tmp_path, faceless, read_only, capsys):
    video, checkpoint = faceless
    assert run_edit(video, checkpoint, read_only / "out.mp4") == 2
    err = one_sentence(capsys)
    assert f"Cannot write the output video {read_only / 'out.mp4'}" in err, err
    assert "Read-only file system" in err or "Permission denied" in err, err
    assert main(["--quiet", "align", "--video", str(video), "--out", str(read_only / "aligned")]) == 2
    assert "Cannot write the alignment folder" in one_sentence(capsys)


@pytest.fixture
def tiny_disk(tmp_path):
    path = tmp_path / "tiny"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here to fill a disk for real")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


def test_full_disk_is_one_sentence_and_leaves_no_partial_file(tmp_path, tiny_checkpoint, tiny_disk, capsys):
    """A real 256 KiB file system: two lossless 640x360 frames do not fit, the write fails mid-way."""
    out = tiny_disk / "edited.mp4"
    status = main(["--quiet", "edit", "--checkpoint", str(tiny_checkpoint), "--video", str(single_face_video()),
                   "--out", str(out), "--max-frames", "2", "--steps", "2", "--device", "cpu", "--lossless"])
    err = one_sentence(capsys)
    assert status == 1 and err == f"error: No space left on device ({out}); free some disk space or write elsewhere.", err
    assert list(tiny_disk.iterdir()) == []


def test_disk_full_while_writing_names_the_output_not_the_temporary_file(tmp_path, monkeypatch, capsys):
    """The same path without a mount (a unit test beside the real one above): ENOSPC from the encoder."""
    import av

    from dva_model.formats import video as video_module

    def full(*_args, **_kwargs):
        raise av.error.OSError(errno.ENOSPC, "No space left on device", "hidden.partial")

    out = tmp_path / "out.mp4"
    writer = video_module.VideoWriter(out, fps=Fraction(25), width=64, height=48)
    monkeypatch.setattr(writer, "_container", type("Full", (), {"mux": full, "close": lambda self: None})())
    with pytest.raises(OSError) as raised:
        with writer:
            writer.write(torch.zeros(1, 48, 64, 3))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out)
    assert list(tmp_path.iterdir()) == []


def test_decode_refuses_to_overwrite_the_crops_it_was_encoded_from(tmp_path, tiny_checkpoint, capsys):
    aligned = tmp_path / "aligned"
    assert main(["--quiet", "align", "--video", str(single_face_video()), "--out", str(aligned),
                 "--max-frames", "2"]) == 0
    crops = aligned / "crops"
    before = {p.name: p.read_bytes() for p in crops.iterdir()}
    latent = tmp_path / "clip.safetensors"
    assert main(["--quiet", "encode", "--checkpoint", str(tiny_checkpoint), "--aligned", str(crops),
                 "--steps", "2", "--out", str(latent), "--device", "cpu"]) == 0
    assert main(["--quiet", "decode", "--checkpoint", str(tiny_checkpoint), "--latent", str(latent),
                 "--out", str(crops), "--device", "cpu"]) == 2
    err = one_sentence(capsys)
    assert f"holds the aligned crops {latent} was encoded from" in err, err
    assert {p.name: p.read_bytes() for p in crops.iterdir()} == before  # the input crops are untouched


# --- 11. Sentences instead of tracebacks -------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu_is_one_sentence_before_any_work(tmp_path, faceless, capsys):
    video, checkpoint = faceless
    status = main(["--quiet", "edit", "--checkpoint", str(checkpoint), "--video", str(video),
                   "--out", str(tmp_path / "out.mp4"), "--device", "cuda"])
    err = one_sentence(capsys)
    assert status == 2 and "torch sees no CUDA GPU here; use --device cpu" in err, err


def test_unknown_device_is_one_sentence(tmp_path, faceless, capsys):
    video, checkpoint = faceless
    assert run_edit(video, checkpoint, tmp_path / "out.mp4", "--device", "gpu0") == 2
    assert "is not a torch device" in one_sentence(capsys)


# --- 12. Signals, and options checked before any work ------------------------------------------------

def _cli(*args, python_options=()):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *python_options, "-m", "dva_model", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_during_the_video_write_leaves_no_partial_file(tmp_path, tiny_checkpoint):
    out = tmp_path / "out" / "edited.mp4"
    out.parent.mkdir()
    process = _cli("--quiet", "edit", "--checkpoint", str(tiny_checkpoint), "--video", str(single_face_video()),
                   "--out", str(out), "--max-frames", "16", "--steps", "2", "--device", "cpu", "--lossless")
    try:
        deadline = time.monotonic() + 1800  # a busy 2-core machine; normally under a minute
        while not any(p.name.startswith(".") for p in out.parent.iterdir()):  # the hidden partial file exists
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the edit never started writing its video"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()  # never leave the command running when an assertion above failed
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err, err
    assert list(out.parent.iterdir()) == []


def test_ctrl_c_during_start_up_prints_no_traceback():
    # -X importtime reports each finished import on stderr: interrupt once the CLI module is in and the
    # command modules (torch, PyAV) are still loading.
    process = _cli("edit", "--help", python_options=("-X", "importtime"))
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.rstrip().endswith("dva_model.cli.main"):
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=60)
    messages = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert process.returncode == 130 and messages == ["cancelled"], (process.returncode, messages)


@pytest.mark.parametrize("option, message", [
    (["--steps", "37"], "cannot be spaced evenly"),
    (["--crf", "60"], "'60' must be 0-51"),
    (["--batch-size", "-1"], "'-1' must be 0 or more"),  # 0: from the device's free memory
])
def test_bad_numbers_are_refused_by_the_parser(tmp_path, faceless, capsys, option, message):
    video, checkpoint = faceless
    with pytest.raises(SystemExit) as stopped:
        run_edit(video, checkpoint, tmp_path / "out.mp4", *option)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_unknown_attribute_is_refused_before_alignment(tmp_path, faceless, capsys):
    video, checkpoint = faceless
    path = directions(tmp_path)
    assert run_edit(video, checkpoint, tmp_path / "out.mp4", "--attribute", "Moustache:0.25",
                    "--classifier", str(path)) == 2
    err = one_sentence(capsys)
    assert "Unknown attribute 'Moustache'. Did you mean Mustache" in err, err
