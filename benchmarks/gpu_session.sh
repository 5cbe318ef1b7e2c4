#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA GPU and PyTorch + transformers already installed
# but no network (the wheels this repo needs beyond them — PyAV, FAISS, webrtcvad-wheels — are given in WHEELS,
# a folder).
#
#   WHEELS=.whl OUT=/tmp/out bash benchmarks/gpu_session.sh     (SKIP_BENCH=1: the tests only)
#
# 1. lays streamzip out as installed, and installs the wheels, in a private site folder (nothing fetched);
# 2. runs the CUDA tests (tests/gpu) and the hf encoder / DPC-KNN unit tests on this machine;
# 3. runs benchmarks/encoders.py --device both and benchmarks/gpu_dpc_knn.py (when present), and copies
#    their JSON results to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/streamzip-gpu}
WHEELS=${WHEELS:-.whl}
SITE=/tmp/streamzip-site
mkdir -p "$OUT" "$SITE"
export PYTHONUNBUFFERED=1 PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
# the package as pip would lay it out (operators/ and pipelines/ live under streamzip/), without a build
rm -rf "$SITE/streamzip" && cp -r streamzip "$SITE/streamzip" && cp -r operators "$SITE/streamzip/operators" \
  && cp -r pipelines "$SITE/streamzip/pipelines" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
REPO=$(pwd)
# From /tmp, so that the installed package (where operators/ is streamzip.operators) answers imports,
# not the source tree.
rm -rf /tmp/streamzip-tests && cp -r tests /tmp/streamzip-tests && cd /tmp || exit 1
python3 - <<'EOF2'
import torch, transformers, streamzip, streamzip.operators.dpc_knn
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "streamzip", streamzip.__version__)
EOF2
status=0
tests=(/tmp/streamzip-tests/gpu /tmp/streamzip-tests/unit/test_hf_encoder.py /tmp/streamzip-tests/unit/test_dpc_knn.py
       /tmp/streamzip-tests/unit/test_query_weights.py)
[ -f /tmp/streamzip-tests/unit/test_hf_audio.py ] && tests+=(/tmp/streamzip-tests/unit/test_hf_audio.py)
timeout 300 python3 -m pytest -q -p no:cacheprovider --rootdir /tmp/streamzip-tests "${tests[@]}" 2>&1 \
  | tee "$OUT/tests.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1
[ -n "${SKIP_BENCH:-}" ] && exit $status  # SKIP_BENCH=1: the tests only
timeout 400 python3 "$REPO/benchmarks/encoders.py" --device both 2>&1 | tail -70 || status=1
cp "$REPO"/benchmarks/results/encoders_gpu.json "$OUT/" 2>/dev/null
if [ -f "$REPO/benchmarks/gpu_dpc_knn.py" ]; then
  timeout 200 python3 "$REPO/benchmarks/gpu_dpc_knn.py" 2>&1 | tail -30 || status=1
  cp "$REPO"/benchmarks/results/*gpu*.json "$OUT/" 2>/dev/null
fi
exit $status
