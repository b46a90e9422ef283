#!/usr/bin/env bash
# GPU check for icv-deploy, one run of under 8 minutes on a single H100 or H200, no network:
#   1. torch-CUDA parity with the CPU path on a tiny random model (fp32, fp16, each eager and fast, the fast path
#      with K = 2 instructions, diffusers);
#   2. the diffusers baseline (paper settings, 100 Euler-ancestral steps) and the fast torch paths at 256 px,
#      fp16, 10 dpmpp_2m steps, on sd15-random (full-size SD 1.5 architecture, random weights, built here);
#      then the fast path with the tiny VAE (TAESD) and with K = 4 instructions, as the time allows.
# Results go to $OUT (if set) or ./gpu-check-out (ignored by git): gpu_check.json, latency_gpu*.json,
# latency_gpu.png, gpu.txt, log.txt.
#
# Usage, from the repository root:   bash benchmarks/gpu_check.sh [--compile]
# (tests/test_bench.py runs gpu_check.py's --smoke mode on the CPU, so the script itself is tested here.)
#
# Nothing is downloaded. What the script needs beyond PyTorch: numpy, pillow, opencv-python-headless, click,
# rich, tqdm, psutil, matplotlib, transformers, safetensors, tokenizers, regex, and diffusers. A machine that
# lacks some of them gets them from wheels carried in the repository's ignored .whl/ folder, made where pip
# works (python version and platform of the GPU machine; --no-deps, so name every missing one):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
# and, with the device tool, carry=[".whl"]. The icv_deploy package itself is used from the working tree.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-python3}"

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "PIL", "cv2", "click", "rich", "tqdm", "psutil", "matplotlib", "transformers",
        "safetensors", "tokenizers", "regex", "diffusers"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing python packages: $missing"
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing the carried wheels from .whl/ into /tmp/icv-site (no network)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/icv-site .whl/*.whl \
      || { echo "error: could not install the carried wheels"; exit 3; }
    export PYTHONPATH="/tmp/icv-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "error: no .whl/ folder with wheels to install them from (see the comment at the top of this script)"; exit 3
  fi
fi
# The working tree's icv_deploy (export/ and training/ are not needed here).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"

timeout 470 "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" --budget-s 420 "$@" 2>&1 | tee "$OUT_DIR/log.txt"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "gpu_check.py ran past its 470 s limit: partial results in $OUT_DIR"
exit "$status"
