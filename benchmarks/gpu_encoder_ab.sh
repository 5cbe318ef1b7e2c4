#!/usr/bin/env bash
# An interleaved A/B of the hf vision encoder on a GPU machine: a baseline copy of
# streamzip/encoders/hf.py (BASE, e.g. `git show REV:streamzip/encoders/hf.py > .ab/hf_old.py` here,
# with .ab/ carried) against the working tree's, each run of `benchmarks/encoders.py --device cuda`
# in turn (ROUNDS pairs), after the CUDA tests and the hf encoder tests on the working tree's code.
# Wheels as for gpu_session.sh (WHEELS). Results: $OUT/ab_{new,old}_N.json and one line per run.
#
#   BASE=.ab/hf_old.py WHEELS=.whl OUT=/tmp/out bash benchmarks/gpu_encoder_ab.sh
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/streamzip-ab} WHEELS=${WHEELS:-.whl} ROUNDS=${ROUNDS:-2}
BASE=${BASE:?BASE: the baseline hf.py}
REPO=$(pwd)
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/wheels "$WHEELS"/*.whl || exit 1
for v in new old; do
  rm -rf /tmp/site_$v && mkdir -p /tmp/site_$v && cp -r streamzip /tmp/site_$v/streamzip \
    && cp -r operators /tmp/site_$v/streamzip/operators && cp -r pipelines /tmp/site_$v/streamzip/pipelines || exit 1
done
cp "$BASE" /tmp/site_old/streamzip/encoders/hf.py || exit 1
rm -rf /tmp/t && cp -r tests /tmp/t && cd /tmp || exit 1
PYTHONPATH=/tmp/site_new:/tmp/wheels timeout 200 python3 -m pytest -q -p no:cacheprovider --rootdir /tmp/t \
  /tmp/t/gpu /tmp/t/unit/test_hf_encoder.py 2>&1 | tail -5 | tee "$OUT/tests.log"
status=${PIPESTATUS[0]}
for i in $(seq "$ROUNDS"); do
  for v in new old; do
    PYTHONPATH=/tmp/site_$v:/tmp/wheels timeout 120 python3 "$REPO/benchmarks/encoders.py" --device cuda \
      --out ab_${v}_$i > /tmp/log_${v}_$i 2>&1 || { tail -5 /tmp/log_${v}_$i; status=1; }
    cp "$REPO/benchmarks/results/ab_${v}_$i.json" "$OUT/" 2>/dev/null
    python3 - "$REPO/benchmarks/results/ab_${v}_$i.json" $v $i <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], [(r["model"], r["batch_size"], r["frames_per_s"]) for r in d["vision"]])
PY
  done
done
exit $status
