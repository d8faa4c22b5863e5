#!/usr/bin/env bash
# Issue 16's GPU measurements in one call (< 8 minutes on one H100/H200):
#   1. ONNX Runtime: which execution providers load (CUDA EP or CPU only).
#   2. U-Net 16-256 org vs sat like for like: lean vs lean and eager vs eager whole-volume inference (256^3),
#      training step time and peak (128^3, batch 2), before (concatenating decoder) and after, the compiled
#      step (torch.compile mode max-autotune: Triton autotuning + CUDA graphs for the fixed patch) vs eager,
#      and the achieved TFLOP/s of lean inference against the device's dense fp32 / TF32 peak.
# Results: benchmarks/results/efficiency-<device>.{json,md} and gpu-efficiency.log, copied to $OUT when set.
#
#   bash benchmarks/gpu_efficiency.sh                 # on the GPU machine
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_efficiency.sh   # the same script end to end on a CPU (tiny sizes)
set -u
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-efficiency-$DEVICE.log"
[ "$DEVICE" = cuda ] || LOG="${TMPDIR:-/tmp}/gpu-efficiency-$DEVICE.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) device=$DEVICE"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  echo "== ONNX Runtime providers"
  timeout 60 python - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, "available:", ort.get_available_providers())
try:
    import io, torch
    m = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.zeros(1, 1, 8, 8, 8),), buf, dynamo=False)
    s = ort.InferenceSession(buf.getvalue(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    print("session providers:", s.get_providers(),
          "-> ORT runs on CUDA" if s.get_providers()[0] == "CUDAExecutionProvider" else "-> ORT runs on the CPU only")
except Exception as err:
    print("ORT CUDA check failed:", type(err).__name__, str(err).splitlines()[0][:200])
EOF
  echo "== efficiency (U-Net org/sat, like for like)"
  if [ "$DEVICE" = cuda ]; then
    # ~20 s per inference mode, ~30 s per training mode; max-autotune compiles in 1-3 min; budget keeps it < 8 min.
    timeout 420 python benchmarks/efficiency.py --device cuda --nets unet3d --skips org,sat --concat-rows \
      --compile-mode max-autotune --compile-all --budget-s 330
  else
    # A smoke test of this script: tiny sizes, results in a scratch folder (never over the committed CPU results).
    timeout 420 python benchmarks/efficiency.py --device cpu --quick --nets unet3d --skips org --concat-rows \
      --no-compile --out "${TMPDIR:-/tmp}/satseg-gpu-efficiency-smoke"
  fi
  echo "== exit $?"
} 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then
  cp "$LOG" "$RESULTS/efficiency-$DEVICE.json" "$RESULTS/efficiency-$DEVICE.md" "$OUT"/ 2>/dev/null || true
fi
