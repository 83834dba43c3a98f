#!/usr/bin/env bash
# The GPU check (issue 15): the main job end to end on CUDA, then the throughput on the GPU and on the CPU.
#
#   bash scripts/gpu_check.sh [WORKDIR]        # on a machine with a CUDA GPU, after `make setup`
#
# 1. a generated 224x224 ImageFolder (scripts/make_imagefolder.py, 10 classes);
# 2. a CUDA latency table of resnet18 (onnxruntime's CUDA provider), then `autoprune search` on CUDA:
#    latency=70% of the unpruned model, ddpg 50 evaluations, 1 epoch distilled fine-tune in one DDP process per GPU;
# 3. scripts/bench_throughput.py on cuda and on the CPU: evaluations/s and fine-tune images/s, and the speed-up.
# Nothing in the test suite needs a GPU; this script is how a GPU machine is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/autoprune_gpu_check}
PY=${PY:-.venv/bin/python}
AP="$PY -m autoprune"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch: run this on a GPU machine")'
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
rm -rf "$WORK" && mkdir -p "$WORK"

"$PY" scripts/make_imagefolder.py "$WORK/imagefolder" --classes 10 --train-per-class 300 --val-per-class 50
$AP latency-table build --model resnet18 --input-shape 1x3x224x224 --device cuda --out "$WORK/resnet18-cuda.csv"
time $AP search --model resnet18 --data "imagefolder:$WORK/imagefolder" --input-shape 1x3x224x224 \
    --budget latency=70% --table "$WORK/resnet18-cuda.csv" --strategy ddpg --episodes 50 --held-out 500 \
    --finetune-epochs 1 --device cuda --nproc "$NGPU" --out "$WORK/run"
"$PY" - "$WORK/run/policy.json" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))
print("compute:", p["search"]["compute"], "| fine-tune:", p["search"]["finetune"])
m = p["metrics"]
print(f"latency {m.get('latency_measured_us', 0) / 1000:.2f} ms measured, test accuracy {m.get('test_accuracy'):.2%}")
PYEOF

"$PY" scripts/bench_throughput.py --device cuda --imagefolder "$WORK/imagefolder" --out "$WORK/throughput.csv"
"$PY" scripts/bench_throughput.py --device cpu --imagefolder "$WORK/imagefolder" --out "$WORK/throughput.csv"
"$PY" - "$WORK/throughput.csv" <<'PYEOF'
import sys
import pandas as pd
df = pd.read_csv(sys.argv[1])
for case, g in df.groupby("case"):
    gpu, cpu = g[g.device.str.startswith("cuda")].iloc[-1], g[g.device == "cpu"].iloc[-1]
    print(f"{case}: evaluations/s {gpu.evaluations_per_s:.2f} on {gpu.hardware} vs {cpu.evaluations_per_s:.2f} on the "
          f"CPU (x{gpu.evaluations_per_s / cpu.evaluations_per_s:.1f}); fine-tune images/s "
          f"{gpu.finetune_images_per_s:.0f} vs {cpu.finetune_images_per_s:.0f} "
          f"(x{gpu.finetune_images_per_s / cpu.finetune_images_per_s:.1f})")
PYEOF
