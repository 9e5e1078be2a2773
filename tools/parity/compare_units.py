"""Stage-by-stage parity: each of our modules against the reference's, on the same inputs, in one process.

    .venv/bin/python tools/parity/compare_units.py --reference REF --reference-out OUT

Where compare.py says *whether* the CLI matches, this says *where* it does not. Both sides load the same
random Lightning checkpoint (the reference through ``LitModel.load_state_dict``, ours through
``dva_model.formats.checkpoint.load_model``) and get identical inputs (the saved aligned crops):
    schedule     kept timesteps and alpha_bar of the respaced process
    z_id, z_lnd, z_face, parsing mask       encoders (the mask as the paste-back foreground)
    eps          one UNet call at several timesteps
    invert, sample  OUR samplers driven by the REFERENCE's UNet vs the reference's sampler, and the
                 full inversion / decode with our UNet in our samplers
Prints max abs errors (and the scale of the values) per stage, and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))

import make_reference  # noqa: E402
import parity_env  # noqa: E402

EPS_TIMESTEPS = (0, 300, 600, 900)


def error(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        return {"shape_ours": list(ours.shape), "shape_ref": list(ref.shape), "max_abs": float("inf")}
    diff = (ours - ref).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "ref_max_abs": float(ref.abs().max())}


def ref_eps_model(lit):
    """The reference's ema UNet as our samplers call a model: (x_t, t original index, z_face) -> eps."""
    def eps(x_t, t, z_face):
        if t.ndim == 0:
            t = t.expand(len(x_t))
        return lit.ema_model(x=x_t, t=t, cond=z_face).pred
    return eps


@torch.no_grad()
def run(reference_dir: Path, reference_out: Path, width: int, chain_frames: int = 1) -> dict:
    from dva_model.diffusion import ddim_invert
    from dva_model.diffusion import ddim_sample
    from dva_model.formats.checkpoint import load_model
    from dva_model.constants import PASTE_MASK_EXCLUDED
    from dva_model.diffusion.schedule import respaced_timesteps

    ref = parity_env.import_reference(reference_dir)
    saved = load_file(str(reference_out / "reference.safetensors"))
    manifest = json.loads((reference_out / "manifest.json").read_text())
    steps = manifest["steps"]
    paths = {k: Path(v) for k, v in manifest["checkpoint"].items()}
    lit, _ = make_reference.load_models(ref, paths, width=width)
    ours = load_model(paths["dva"], device="cpu", dtype=torch.float32)
    crops = saved["crops"]
    enc = lit.ema_model.encoder
    report: dict[str, dict] = {}

    sampler = lit.conf._make_diffusion_conf(steps).make_sampler()
    kept = respaced_timesteps(steps)
    report["schedule"] = {
        "timesteps_equal": list(sampler.timestep_map) == list(kept),
        "ours": list(kept), "ref": list(sampler.timestep_map),
        "alpha_bar": error(ours.alpha_bar.double()[kept], torch.from_numpy(sampler.alphas_cumprod)),
    }

    z_id_ref = enc.id_forward(crops)
    z_lnd_ref = enc.lndnet(crops)
    report["z_id"] = error(ours.encoder.encode_identity(crops), z_id_ref)
    report["z_lnd"] = error(ours.encoder.encode_landmarks(crops), z_lnd_ref)
    z_mean = z_id_ref.mean(dim=0, keepdim=True).expand(len(crops), -1)
    z_face_ref = enc.forward_with_id(z_mean, crops)
    report["z_face"] = error(ours.encoder.face_condition(z_mean, z_lnd_ref), z_face_ref)
    mask_ref = enc.face_mask(crops, for_video=True)
    labels = ours.parse(crops)
    excluded = torch.tensor(PASTE_MASK_EXCLUDED)
    mask_ours = (~torch.isin(labels, excluded)).float()[:, None]
    report["paste_mask"] = {**error(mask_ours, mask_ref),
                            "pixels_differing_fraction": float((mask_ours != mask_ref).float().mean())}

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(crops.shape, generator=generator)
    eps_report = {}
    for t in EPS_TIMESTEPS:
        a = ours.alpha_bar.double()[t].float()
        x_t = a.sqrt() * crops + (1 - a).sqrt() * noise
        t_batch = torch.full((len(crops),), t, dtype=torch.int64)
        eps_ref = lit.ema_model(x=x_t, t=t_batch, cond=z_face_ref).pred
        eps_report[str(t)] = error(ours.unet(x_t, t_batch, z_face_ref), eps_ref)
    report["eps"] = eps_report

    # Whole chains on the first `chain_frames` frames only: each costs 2 * steps UNet calls per frame.
    # z_lnd and z_face are recomputed on the subset: a batch of 4 and of 1 round differently.
    crops = crops[:chain_frames]
    z_lnd_ref = enc.lndnet(crops)
    z_face_ref = enc.forward_with_id(z_mean[:chain_frames], crops)
    x_T_ref = lit.encode_stochastic(crops, z_face_ref, T=steps)
    decoded_ref = lit.render(x_T_ref, z_face_ref, T=steps) * 2 - 1
    ref_unet = ref_eps_model(lit)
    report["invert_our_sampler_ref_unet"] = error(
        ddim_invert.invert(ref_unet, crops, kept, cond=z_face_ref, alpha_bar=ours.alpha_bar), x_T_ref)
    report["sample_our_sampler_ref_unet"] = error(
        ddim_sample.sample(ref_unet, x_T_ref, kept, cond=z_face_ref, alpha_bar=ours.alpha_bar), decoded_ref)
    x_T_ours = ours.invert(crops, z_mean[0], z_lnd_ref, steps=steps, batch_size=len(crops))
    report["invert_ours"] = error(x_T_ours, x_T_ref)
    report["sample_ours_from_ref_x_T"] = error(
        ours.decode(x_T_ref, z_mean[0], z_lnd_ref, steps=steps, batch_size=len(crops)), decoded_ref)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="checkout of the DVA reference")
    parser.add_argument("--reference-out", required=True, type=Path, help="the --out of make_reference.py")
    parser.add_argument("--width", type=int, help="UNet width used by make_reference (default: manifest)")
    parser.add_argument("--chain-frames", type=int, default=1, help="frames for the full invert/decode chains")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = json.loads((args.reference_out / "manifest.json").read_text())
    report = run(args.reference, args.reference_out.resolve(), args.width or manifest["width"],
                 args.chain_frames)
    for name, value in report.items():
        print(f"{name:<32} {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
