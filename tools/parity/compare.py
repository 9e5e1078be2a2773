"""Run OUR CLI on the inputs of make_reference.py and compare its results with the reference's.

    .venv/bin/python tools/parity/compare.py --reference-out OUT

Runs, with the random Lightning checkpoint and classifier that make_reference.py wrote:
    python -m dva_model encode --checkpoint CKPT --aligned OUT/aligned --steps S --out LATENT
    python -m dva_model decode --checkpoint CKPT --latent LATENT --steps S --out ours/recon
    python -m dva_model decode ... --attribute Mustache:0.25 --classifier CLS --edit-norm unit --out ours/edit
(all on CPU, fp32, 4 frames per UNet call as the reference's default --batch_size) and checks:
    z_id, z_lnd, the mean identity   max |ours - ref| <= 1e-4
    x_T                              max |ours - ref| / max |ref| <= 1e-3
    decoded crops (PNG)              max |ours - ref| <= 2 / 255, unedited and edited
Prints one line per check and a JSON report; exit status 0 when every check passes, 1 otherwise.
``--unet-mode`` runs our side with a faster UNet path (channels-last and/or torch.compile) against the
same reference outputs and tolerances. ``--precision bf16`` (or fp16) runs our UNet in reduced precision:
the tolerances are those of fp32, so this measures the difference rather than promising to pass.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
FEATURE_TOLERANCE = 1e-4  # z_id (unit vectors), z_lnd (in [0, 1]), mean identity: absolute
X_T_RELATIVE_TOLERANCE = 1e-3  # max abs error over max abs value
PIXEL_TOLERANCE = 2  # uint8 levels, i.e. 2/255
CLI_BATCH = 4  # the reference's default --batch_size
# Our side's UNet paths that run on a CPU (dva_model.nets.unet_runner.RUNNER_MODES) -> their CLI options.
UNET_MODES = {
    "eager": [],
    "channels-last": ["--channels-last"],
    "compile": ["--compile"],
    "compile+channels-last": ["--compile", "--channels-last"],
}


@dataclass
class Check:
    name: str
    value: float
    tolerance: float
    unit: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.value)) and self.value <= self.tolerance


def read_reference(reference_out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = reference_out / "reference.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = {k: json.loads(v) for k, v in handle.metadata().items()}
    return load_file(str(path)), metadata


def read_pngs(folder: Path, names: list[str]) -> np.ndarray:
    """[N, H, W, 3] uint8 of ``folder/<name>.png`` in ``names`` order."""
    from PIL import Image

    missing = [n for n in names if not (folder / f"{n}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; found {sorted(p.name for p in folder.glob('*'))}")
    return np.stack([np.asarray(Image.open(folder / f"{n}.png").convert("RGB")) for n in names])


def run_cli(python: str, arguments: list[str], log_path: Path) -> float:
    """``python -m dva_model <arguments>`` in the repository root; returns seconds; raises on failure."""
    command = [python, "-m", "dva_model", *arguments]
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"our CLI failed ({result.returncode}): {' '.join(command)}\n" + "\n".join(tail))
    return time.perf_counter() - start


def run_ours(python: str, reference_out: Path, work: Path, metadata: dict,
             unet_mode: str = "eager", precision: str = "fp32") -> dict[str, float]:
    """Encode, decode and decode-with-edit through our CLI with the UNet path ``unet_mode`` and the UNet
    ``precision``; returns timings."""
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "cli.log"
    log_path.write_text("")
    paths = {k: Path(v) for k, v in metadata["checkpoint"].items()}
    common = ["--checkpoint", str(paths["dva"]), "--device", "cpu", "--precision", precision,
              "--batch-size", str(CLI_BATCH), *UNET_MODES[unet_mode]]
    steps = ["--steps", str(metadata["steps"])]
    latent = work / "latent.safetensors"
    edit = f"{metadata['attribute']}:{metadata['scale']}"
    return {
        "encode": run_cli(python, ["encode", *common, *steps, "--aligned", str(reference_out / "aligned"),
                                   "--out", str(latent)], log_path),
        "decode": run_cli(python, ["decode", *common, *steps, "--latent", str(latent),
                                   "--out", str(work / "recon")], log_path),
        "decode_edit": run_cli(python, ["decode", *common, *steps, "--latent", str(latent),
                                        "--attribute", edit, "--classifier", str(paths["classifier"]),
                                        "--edit-norm", "unit", "--out", str(work / "edit")], log_path),
    }


def compile_seconds(log_path: Path) -> list[float]:
    """Seconds of every UNet compile our CLI logged (``UNetRunner``: "compiled the UNet ... in X s")."""
    if not log_path.is_file():
        return []
    return [float(m) for m in re.findall(r"compiled the UNet .* in ([0-9.]+) s", log_path.read_text())]


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max())


def pixel_check(name: str, ours: np.ndarray, reference: np.ndarray) -> Check:
    if ours.shape != reference.shape:
        return Check(name, float("inf"), PIXEL_TOLERANCE, "/255", f"shapes {ours.shape} vs {reference.shape}")
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    detail = f"mean {diff.mean():.4f}/255, {(diff > 0).mean() * 100:.2f}% of values differ"
    return Check(name, float(diff.max()), PIXEL_TOLERANCE, "/255", detail)


def compare(reference_out: Path, work: Path) -> list[Check]:
    """All checks of the module docstring, from files already written by both sides."""
    ref, metadata = read_reference(reference_out)
    names = metadata["frames"]
    ours = load_file(str(work / "latent.safetensors"))
    x_T_scale = float(ref["x_T"].abs().max())
    x_T_error = max_abs(ours["x_T"], ref["x_T"])
    x_T_rms = float(((ours["x_T"] - ref["x_T"]).pow(2).mean().sqrt() / ref["x_T"].pow(2).mean().sqrt())) \
        if ours["x_T"].shape == ref["x_T"].shape else float("inf")
    edit_dir = reference_out / f"edit_{metadata['attribute']}_{metadata['scale']:.2f}"
    checks = [
        Check("z_id", max_abs(ours["z_id"], ref["z_id"]), FEATURE_TOLERANCE, "abs"),
        Check("z_lnd", max_abs(ours["z_lnd"], ref["z_lnd"]), FEATURE_TOLERANCE, "abs"),
        Check("mean identity", max_abs(ours["identity"].reshape(1, -1), ref["z_id_mean"]),
              FEATURE_TOLERANCE, "abs"),
        Check("x_T", x_T_error / x_T_scale, X_T_RELATIVE_TOLERANCE, "rel",
              f"max abs {x_T_error:.3g} of max |x_T| {x_T_scale:.3g}; rms rel {x_T_rms:.3g}"),
        pixel_check("decoded crops", read_pngs(work / "recon", names), read_pngs(reference_out / "recon", names)),
        pixel_check(f"decoded {metadata['attribute']} {metadata['scale']:+g}", read_pngs(work / "edit", names),
                    read_pngs(edit_dir, names)),
    ]
    return checks


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-out", required=True, type=Path, help="the --out of make_reference.py")
    parser.add_argument("--work", type=Path, help="where our CLI writes (default: REFERENCE_OUT/ours)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs python -m dva_model")
    parser.add_argument("--skip-run", action="store_true", help="compare files our CLI already wrote")
    parser.add_argument("--report", type=Path, help="also write the JSON report here")
    parser.add_argument("--unet-mode", choices=sorted(UNET_MODES), default="eager",
                        help="our side's UNet path (the reference always runs eager fp32)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="our side's UNet precision (reduced precision: the difference is measured)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    reference_out = args.reference_out.resolve()
    work = (args.work or reference_out / "ours").resolve()
    _, metadata = read_reference(reference_out)
    timings = {} if args.skip_run else run_ours(args.python, reference_out, work, metadata,
                                                args.unet_mode, args.precision)
    checks = compare(reference_out, work)
    for check in checks:
        status = "PASS" if check.passed else "FAIL"
        print(f"{status}  {check.name:<22} {check.value:.3g} {check.unit} (tolerance {check.tolerance:g}) "
              f"{check.detail}")
    report = {"passed": all(c.passed for c in checks), "steps": metadata["steps"], "unet_mode": args.unet_mode,
              "precision": args.precision,
              "checks": [{**asdict(c), "passed": c.passed} for c in checks],
              "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "compile_s": compile_seconds(work / "cli.log")}
    text = json.dumps(report, indent=2)
    print(text)
    (work / "report.json").write_text(text)
    if args.report:
        args.report.write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
