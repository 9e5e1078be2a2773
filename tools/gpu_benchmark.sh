#!/usr/bin/env bash
# Every UNet mode of the FULL-SIZE DVA model on one GPU, then a whole-video edit, at 100 + 100 DDIM steps.
#
#   bash tools/gpu_benchmark.sh [VIDEO] [OUT_DIR]
#
# VIDEO defaults to tests/.media/single_face.mp4 (72 frames, 640x360; `python -m pytest tests/test_video.py`
# fetches it), OUT_DIR to /tmp/dva-gpu-benchmark. Needs one CUDA GPU and this repository's requirements;
# no weights (the model is random: speed does not depend on the values) and no network. Prints one table per
# part and leaves every JSON result in OUT_DIR. About 10 minutes on an H100/H200 (compiling included).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
VIDEO=${1:-tests/.media/single_face.mp4}
OUT=${2:-/tmp/dva-gpu-benchmark}
STEPS=${STEPS:-100}
FRAMES=${FRAMES:-32}
mkdir -p "$OUT"
export PYTHONPATH=$PWD

"$PYTHON" - "$OUT/dva_full_random.safetensors" <<'EOF'
import sys, torch
from dva_model.formats.checkpoint import save_model
from dva_model.model import DVAConfig, DVAModel
from dva_model.nets.unet import UNetConfig
from dva_model.testing import randomize_
assert torch.cuda.is_available(), "this script needs a CUDA GPU"
model = DVAModel(config=DVAConfig(unet=UNetConfig()))
randomize_(model, seed=0)
save_model(sys.argv[1], model)
print("random full-size model:", sys.argv[1], torch.cuda.get_device_name())
EOF
CKPT="$OUT/dva_full_random.safetensors"

# name | options of "ours" (the reference setting, eager fp32 batch 4, runs beside each)
MODES=(
  "fp32-b16|--precision fp32 --batch-size 16"
  "fp32-b16-cl|--precision fp32 --batch-size 16 --channels-last"
  "bf16-b16|--precision bf16 --batch-size 16"
  "fp16-b16|--precision fp16 --batch-size 16"
  "bf16-b16-cl|--precision bf16 --batch-size 16 --channels-last"
  "bf16-b16-compile-cl|--precision bf16 --batch-size 16 --channels-last --compile"
  "bf16-b32-cudagraphs-cl|--precision bf16 --batch-size 32 --channels-last --cuda-graphs"
  "fp16-b32-cudagraphs-cl|--precision fp16 --batch-size 32 --channels-last --cuda-graphs"
)
for entry in "${MODES[@]}"; do
  name=${entry%%|*}; options=${entry#*|}
  # shellcheck disable=SC2086
  "$PYTHON" tools/benchmark.py crops --checkpoint "$CKPT" --frames "$FRAMES" --steps "$STEPS" --device cuda \
    $options > "$OUT/unet_$name.json" || echo "mode $name failed (see above)"
done
"$PYTHON" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"\nUNet, full size, {'mode':<24} {'ms/frame-fwd':>12} {'TFLOP/s':>8} {'vs ref':>7} {'x_T rel':>9} {'px max':>6} {'compile s':>9} {'peak GB':>8}")
ref_printed = False
for path in sorted(out.glob("unet_*.json")):
    r = json.loads(path.read_text())
    if not ref_printed:
        ref = r["runs"]["reference"]
        print(f"{'reference (eager fp32 b4)':<40} {ref['unet_ms_per_frame_forward']:>12.2f} {ref['tflop_per_s']:>8.1f}")
        ref_printed = True
    ours, diff = r["runs"]["ours"], r.get("output_difference", {})
    print(f"{path.stem[5:]:<40} {ours['unet_ms_per_frame_forward']:>12.2f} {ours['tflop_per_s']:>8.1f} "
          f"{r.get('speedup_unet', float('nan')):>7.2f} {diff.get('x_T_max_rel', float('nan')):>9.2e} "
          f"{diff.get('decoded_max_levels', -1):>6} {ours['compile_s']:>9.1f} {r.get('peak_device_gb', float('nan')):>8.2f}")
EOF

# The whole edit, stage by stage (reference setting vs the fastest mode), lossless outputs compared.
if [ -f "$VIDEO" ]; then
  "$PYTHON" tools/benchmark.py edit --checkpoint "$CKPT" --video "$VIDEO" --steps "$STEPS" --device cuda \
    --max-frames "$FRAMES" --precision bf16 --batch-size 32 --channels-last --cuda-graphs --work "$OUT/edit" \
    > "$OUT/edit.json"
else
  echo "no video at $VIDEO: skipped the whole-edit stage table"
fi
