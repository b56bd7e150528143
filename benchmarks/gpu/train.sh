#!/usr/bin/env bash
# Train the built-in default model on the GPU machine in one call and bring the folder back.
#
# Before the call, on the CPU machine (once): python3 benchmarks/gpu/prepare_encoder.py .enc/minilm-fp16
# (the text encoder's package cannot be installed there; its float16 copy, 44 MiB, travels with
# the repository, ~18 MiB, under the 64 MiB a call carries). Then, with carry [".enc"]:
#     bash benchmarks/gpu/train.sh [train-default options...]
# e.g.  TRAIN_S=480 bash benchmarks/gpu/train.sh --teacher-steps 20000 --seed 0
# The folder lands in $OUT/model (weights, ltc_model.json, loss curves: under the 8 files a call
# returns); evaluate it on the CPU machine: ltc-stream eval-default --model DIR --calibrate ...
# DEVICE=cpu with --quick makes a dry run of this script anywhere.
set -u
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-out}
ENC=${ENC:-.enc/minilm-fp16}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f "$REPO/$ENC/config.json" ] || { echo "no $ENC: run python3 benchmarks/gpu/prepare_encoder.py $ENC first, and carry it"; exit 1; }
export LTC_STREAM_TEXT_ENCODER=$REPO/$ENC
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/log.txt"
# the project beside the image's packages (run from /tmp: the repository root would shadow it)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site "$REPO" \
  > /tmp/install.log 2>&1 || { tail -n 20 /tmp/install.log | tee -a "$OUT/log.txt"; exit 1; }
export PYTHONPATH=/tmp/site
t0=$SECONDS
(cd /tmp && timeout --kill-after=10 "${TRAIN_S:-480}" python3 -m ltc_stream train-default --device "${DEVICE:-cuda}" \
  --threads "${THREADS:-8}" --output "$OUT/model" "$@") >> "$OUT/log.txt" 2>&1
rc=$?
echo "train-default: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
# the log without the progress bars' redraws
tr '\r' '\n' < "$OUT/log.txt" | grep -v -E '^\s*$|it/s\]$|s/it\]$' | tail -n 40
rm -f "$OUT/model/loss_curves_"*.png  # keep the returned files under eight
ls -la "$OUT/model" 2>/dev/null
exit $rc
