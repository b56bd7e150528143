#!/usr/bin/env bash
# Every GPU measurement of the project in one call of the device machine (it is lent by the
# minute): kernels, the default model's speed, Wan2.1-1.3B causal and AnimateDiff-Lightning at
# full size with random weights, lever by lever. Each step has its own time limit and writes its
# JSON under $OUT as it goes, so a step cut short still leaves the others' results.
#
# Needs, carried with the call: .whl/ with diffusers (and importlib-metadata), fetched on a CPU
# machine with ../shared/tools/gpu-wheels-style `pip download` (the GPU image has torch and
# triton but not diffusers). Run from the repository root:
#     bash benchmarks/gpu/run.sh            (OUT defaults to ./gpu-out; STEPS="wan animatediff" runs only those;
#                                           KERNELS_S, DEFAULT_S, WAN_S, AD_S, IMPORTED_S set the time limits)
# The imported-layout benchmark alone (issue 35): STEPS=imported bash benchmarks/gpu/run.sh
# The JSON files are copied into benchmarks/results/ by hand, with the card's name in them.
set -u
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-kernels default wan animatediff imported}  # a rerun can name fewer
step() {  # step NAME SECONDS COMMAND...: run with a limit, log its output, never stop the script
  local name=$1 limit=$2; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  (cd /tmp && timeout --kill-after=10 "$limit" "$@") > "/tmp/$name.log" 2>&1
  local rc=$?
  { echo "=== $name: $*"; cat "/tmp/$name.log"; echo "=== $name: exit $rc after $((SECONDS - t0)) s"; } >> "$OUT/log.txt"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  grep -E '^\[(bench|default-speed)\]|Error|error:' "/tmp/$name.log" | tail -n 12
}

# at most 8 files come back from a call: one log, one JSON per step
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/log.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
# the project itself beside them (run from /tmp: the repository root would shadow the installed package)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site "$REPO" > /tmp/install.log 2>&1 \
  || { tail -n 20 /tmp/install.log | tee -a "$OUT/log.txt"; exit 1; }
(cd /tmp && python3 -c "import torch, triton, diffusers, ltc_stream.kernels; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__)") 2>&1 | tee -a "$OUT/log.txt"

step kernels "${KERNELS_S:-80}" python3 -m ltc_stream bench kernels --device cuda --output "$OUT/kernels.json"
step default "${DEFAULT_S:-50}" python3 "$REPO/benchmarks/gpu/default_speed.py" --device cuda \
  --embedding "$REPO/benchmarks/gpu/prompt.safetensors" --sizes 128 256 512 --output "$OUT/default.json"
step wan "${WAN_S:-220}" python3 -m ltc_stream bench model --model wan-causal-1.3b --random-weights --size 832x480 \
  --levers ltc,decoder,compile,cudagraphs --output "$OUT/wan.json"
step animatediff "${AD_S:-140}" python3 -m ltc_stream bench model --model animatediff-lightning --random-weights \
  --size 512x512 --levers ltc,decoder,compile,cudagraphs --output "$OUT/animatediff.json"
# issue 35: the imported Self-Forcing layout (random weights made by imported_wan.py, through `ltc-stream import`)
# at 832x480 with TAEHV, beside a re-run of the built-in random-weight Wan in the same call (needs
# transformers, tokenizers and safetensors on the machine, as import and the folder's text encoder do)
step imported "${IMPORTED_S:-300}" bash -c "python3 '$REPO/benchmarks/gpu/imported_wan.py' /tmp/imported \
  && python3 -m ltc_stream bench model --model /tmp/imported/self-forcing --random-weights --size 832x480 \
       --levers ltc,decoder --output '$OUT/imported-self-forcing.json' \
  && python3 -m ltc_stream bench model --model wan-causal-1.3b --random-weights --size 832x480 \
       --levers ltc,decoder --output '$OUT/wan-random-rerun.json'"
ls -la "$OUT"
