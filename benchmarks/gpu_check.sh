#!/usr/bin/env bash
# The GPU check of issue 16, as ONE device-tool call (at most 10 minutes; the session has 15):
#   1. the test suite with EMBENCH_TEST_DEVICE=cuda (tests that train or embed use the GPU)
#   2. benchmarks/train_throughput.py --device cuda: fp32 and bf16, all four encoders, 64 and
#      96 px
#   3. a quick p_vae run: embench run --encoder p_vae --task lunarlander --preset quick
#      --device cuda --precision bf16 (its record comes back)
#   4. the paper preset for p_vae at z=64, for as long as the budget allows (its img/s is in
#      the training log even when it does not finish)
# Before: `bash benchmarks/gpu_prepare.sh` here (wheels and AlexNet weights into .gpu/).
# Device call: command `bash benchmarks/gpu_check.sh`, carry [".gpu"], timeout_s 600.
# Each phase has its own time limit (seconds, env TESTS_S TRAIN_S QUICK_S PAPER_S) so a slow
# phase cannot eat the others; logs and records go to $OUT (or ./gpu-out without the tool).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
TESTS_S=${TESTS_S:-170} TRAIN_S=${TRAIN_S:-100} QUICK_S=${QUICK_S:-150} PAPER_S=${PAPER_S:-110}
export PYTHONUNBUFFERED=1 EMBENCH_HOME=$PWD/.gpu/home
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
log "cpus $(nproc); python $(python3 --version 2>&1); $(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
# the image's torch (its CUDA build) stays; only what it lacks is added, then embench itself
python3 -m pip install --quiet --no-index --no-deps .gpu/wheels/*.whl 2>&1 | tail -2
python3 -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -c 'import gymnasium, Box2D, embench; print("imports ok", embench.__version__)' \
    || { log "setup failed"; exit 1; }

log "1/4 tests on cuda (limit ${TESTS_S}s)"
# ray and the pip-install tests need packages or a network the device lacks
EMBENCH_TEST_DEVICE=cuda timeout "$TESTS_S" python3 -m pytest -q -p no:cacheprovider -n 8 \
    -m "not slow and not ray and not installs" tests > "$OUT/tests.log" 2>&1
log "tests: $(tail -1 "$OUT/tests.log")"

log "2/4 training throughput (limit ${TRAIN_S}s)"
timeout "$TRAIN_S" python3 benchmarks/train_throughput.py --device cuda \
    --models ae,vae,p_ae,p_vae --sizes 64,96 --precisions fp32,bf16 --rounds 3 \
    > "$OUT/train_throughput.log" 2>&1
log "train_throughput exit $?"

log "3/4 quick p_vae, cuda bf16 (limit ${QUICK_S}s)"
timeout "$QUICK_S" python3 -m embench.cli run --encoder p_vae --task lunarlander \
    --preset quick --device cuda --precision bf16 > "$OUT/quick_p_vae.log" 2>&1
log "quick p_vae exit $?"
cp "$EMBENCH_HOME"/results/lunarlander/p_vae-*.json "$OUT"/ 2>/dev/null

log "4/4 paper p_vae z=64, cuda bf16, as far as ${PAPER_S}s allow"
timeout "$PAPER_S" python3 -m embench.cli run --encoder p_vae --task lunarlander \
    --preset paper --z 64 --device cuda --precision bf16 > "$OUT/paper_p_vae.log" 2>&1
log "paper p_vae exit $? (124: stopped at its limit)"
grep -ho "[0-9.]* img/s" "$OUT/paper_p_vae.log" | tail -1 | sed 's/^/paper p_vae training: /' \
    | tee -a "$OUT/summary.txt"
log "done"
