#!/usr/bin/env bash
# The one prepared GPU check (issue 21), for the day a GPU is lent: under 8 minutes on one H100/H200.
#   1. the CUDA-only tests (tests/training/test_cuda.py) and the mixed-precision matrix on CUDA's own autocast;
#   2. a 20-step default `satseg train` (bf16 AMP, the default on CUDA) per 3D backbone, org and sat;
#   3. `satseg segment` of each result with both backends (torch; ONNX Runtime's CUDA provider);
#   4. the efficiency figures (benchmarks/gpu_efficiency.sh), as time allows.
# Everything is logged to benchmarks/results/gpu-check-<date>.log (copied to $OUT when set).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu_check.sh   # the same script end to end on a CPU (with --amp: CPU autocast)
set -u
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=${TMPDIR:-/tmp}/satseg-gpu-check-$STAMP
RESULTS=benchmarks/results
mkdir -p "$WORK/runs" "$WORK/masks" "$RESULTS"
LOG="$RESULTS/gpu-check-$DEVICE-$STAMP.log"
[ "$DEVICE" = cuda ] || LOG="$WORK/gpu-check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SATSEG_CACHE="$WORK/cache"
AMP=()
[ "$DEVICE" = cuda ] || AMP=(--amp)  # on the CPU, ask for autocast explicitly: the CUDA dtype path
start=$SECONDS
{
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) device=$DEVICE"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    'available', torch.cuda.is_available()); print('onnxruntime', ort.__version__, ort.get_available_providers())"

  echo "== 1. CUDA tests and the mixed-precision matrix"
  timeout 150 python -m pytest -q -x tests/training/test_cuda.py tests/training/test_mixed_precision.py \
    -k "cuda or bf16 or fp16 or policy or autocast" -p no:cacheprovider 2>&1 | tail -15

  echo "== 2-3. 20-step default training per 3D backbone, then segment with both backends"
  python - "$WORK" <<'PY'
import sys
from pathlib import Path
from satseg.data.preprocess import preprocess_dataset
from satseg.data.synthetic import write_synthetic_msd
work = Path(sys.argv[1])
raw = write_synthetic_msd(work / "raw", 6, (48, 48, 48), spacing=(1.0, 1.0, 1.0), seed=0, oblique=False)
preprocess_dataset(raw, work / "pp", folds=2, seed=0)
PY
  SCAN=$(ls "$WORK"/raw/imagesTr/* | head -1)
  for net in unet3d vnet3d di2in3d tiramisu3d; do
    for skip in org sat; do
      run="$WORK/runs/$net-$skip"
      t0=$SECONDS
      timeout 90 satseg train --data "$WORK/pp" --out "$run" --net "$net" --skip "$skip" --epochs 2 --iters 10 \
        --device "$DEVICE" "${AMP[@]}" --json > "$run.train.json" 2> "$run.train.err"
      echo "train $net $skip: exit $? in $((SECONDS - t0)) s; $(tail -c 300 "$run.train.err" | tr '\n' ' ' | tail -c 200)"
      for backend in torch onnx; do
        t0=$SECONDS
        if [ "$backend" = onnx ]; then
          timeout 60 satseg export-onnx "$run" -o "$run.onnx" > /dev/null 2>&1
          model="$run.onnx"
        else
          model="$run"
        fi
        timeout 60 satseg segment "$SCAN" --model "$model" --backend "$backend" --device "$DEVICE" \
          -o "$WORK/masks/$net-$skip-$backend.nii.gz" --json > "$run.$backend.json" 2> "$run.$backend.err"
        echo "  segment $backend: exit $? in $((SECONDS - t0)) s $(grep -o '"providers[^]]*]' "$run.$backend.json" | head -1)"
      done
    done
  done

  left=$((470 - (SECONDS - start)))
  echo "== 4. efficiency figures ($left s left)"
  if [ "$DEVICE" = cuda ] && [ "$left" -gt 120 ]; then
    timeout "$left" bash benchmarks/gpu_efficiency.sh
  else
    echo "skipped (not on CUDA, or no time left)"
  fi
  echo "== done in $((SECONDS - start)) s"
} 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then
  cp "$LOG" "$OUT"/ 2>/dev/null || true
  cp "$RESULTS"/efficiency-"$DEVICE".* "$OUT"/ 2>/dev/null || true
fi
