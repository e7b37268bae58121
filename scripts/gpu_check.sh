#!/usr/bin/env bash
# GPU check, run from anywhere on a machine with an NVIDIA GPU, python3 with a
# CUDA build of torch, the CUDA toolkit, and no network:
#
#   1. build the extension in place for this GPU (LOSSOPT_BUILD=cuda: a build
#      without the CUDA kernels is an error);
#   2. print build_info();
#   3. run tests/test_cuda.py (-m cuda), junit xml + log;
#   4. compute-sanitizer memcheck on a small script calling all three fused ops;
#   5. benchmarks/step_time.py --out ..., if that script exists and takes --out;
#   6. write benchmarks/results/gpu_check_<date>.md, and copy it and the logs
#      into $OUT when OUT is set.
#
# Every step runs even if an earlier one failed; the exit status is 1 if any
# step failed. Everything fits in GPU_CHECK_BUDGET seconds (default 530).
#
# Nothing is installed from the network. pytest must be importable; if it is
# not, wheels of pytest (and its dependencies) in $LOSSOPT_WHEELS, .whl/ or
# shared/wheels/ are installed into a temporary folder with pip --no-index.
# Without hypothesis (needed by tests/conftest.py) the test file runs with
# --noconftest (it needs nothing from conftest).
#
# Environment: PYTHON (default python3), CUDA_HOME, TORCH_CUDA_ARCH_LIST
# (default: this GPU's compute capability), MAX_JOBS (default 16),
# PYTEST_ADDOPTS (extra pytest options, e.g. "-x" or "-k 'not 2_31'"),
# STEP_TIME_ARGS (options of benchmarks/step_time.py besides --out; default
# "--device cuda --quick" where it has them),
# GPU_CHECK_BUDGET, LOSSOPT_WHEELS, OUT.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || { echo "gpu_check: cannot cd to the repository root" >&2; exit 2; }
ROOT=$(pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-530}
START=$(date +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
DATE_HUMAN=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
RESULTS=benchmarks/results
LOGDIR=$RESULTS/gpu_check_$STAMP
SUMMARY=$RESULTS/gpu_check_$STAMP.md
mkdir -p "$LOGDIR" || exit 2
TMPD=$(mktemp -d)
trap 'rm -rf "$TMPD"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

STEPS=()
declare -A STATUS=() SECONDS_TAKEN=()
N_FAILED=0

log() { echo "[gpu_check $(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
# record STEP ok|FAILED|skipped [detail] [seconds]
record() {
    STEPS+=("$1")
    STATUS[$1]="$2${3:+: $3}"
    SECONDS_TAKEN[$1]=${4:-}
    if [ "$2" = FAILED ]; then N_FAILED=$((N_FAILED + 1)); fi
    log "step $1: $2${3:+: $3}"
}
# seconds left in the budget, minus a reserve for the later steps
left() { echo $(( BUDGET - ($(date +%s) - START) - ${1:-0} )); }
# a timeout of at most $1 seconds, leaving $2 seconds for what follows
limit() {
    local t; t=$(left "${2:-0}")
    if (( t > $1 )); then t=$1; fi
    if (( t < 10 )); then t=10; fi
    echo "$t"
}

# ---------------------------------------------------------------- environment
log "repository: $ROOT; logs: $LOGDIR"
DEVICE_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
nvidia-smi > "$LOGDIR/nvidia-smi.txt" 2>&1
if [ -z "$DEVICE_NAME" ]; then
    DEVICE_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo unknown)
fi
DEVICE_SLUG=$(echo "$DEVICE_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/_/g; s/^_+//; s/_+$//')
[ -n "$DEVICE_SLUG" ] || DEVICE_SLUG=unknown
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain 2>/dev/null | wc -l | tr -d ' ')
[ "$COMMIT" = unknown ] && DIRTY=unknown
log "device: $DEVICE_NAME (driver ${DRIVER:-unknown}); commit $COMMIT"

t0=$(date +%s)
if "$PY" - > "$LOGDIR/env.txt" 2>&1 <<'PY'
import platform, sys
import torch
print("python", sys.version.replace("\n", " "), platform.platform())
print("torch", torch.__version__, "built with CUDA", torch.version.cuda)
print("cuda available", torch.cuda.is_available())
assert torch.version.cuda is not None, "torch is not a CUDA build"
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PY
then
    record environment ok "$(grep '^torch ' "$LOGDIR/env.txt")" $(( $(date +%s) - t0 ))
else
    record environment FAILED "torch with CUDA not usable, see env.txt: $(tail -n 1 "$LOGDIR/env.txt")" $(( $(date +%s) - t0 ))
fi
TORCH_LINE=$(grep '^torch ' "$LOGDIR/env.txt" 2>/dev/null || echo "torch: unknown")
PY_LINE=$(grep '^python ' "$LOGDIR/env.txt" 2>/dev/null || echo "python: unknown")

# CUDA toolkit: CUDA_HOME if it has nvcc, else /usr/local/cuda, else the newest
# /usr/local/cuda-*, else the toolkit of the nvcc on PATH.
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "${CUDA_HOME}/bin/nvcc" ]; then
    CUDA_HOME=""
    for c in /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -Vr); do
        if [ -x "$c/bin/nvcc" ]; then CUDA_HOME=$c; break; fi
    done
    if [ -z "$CUDA_HOME" ] && command -v nvcc > /dev/null 2>&1; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
if [ -n "$CUDA_HOME" ]; then
    export CUDA_HOME
    export PATH="$CUDA_HOME/bin:$PATH"
    NVCC_VERSION=$("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -n 1)
else
    NVCC_VERSION="no nvcc found"
fi
log "CUDA_HOME=${CUDA_HOME:-<none>} ($NVCC_VERSION)"

if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(f"{M}.{m}")' 2>/dev/null)
fi
export TORCH_CUDA_ARCH_LIST
log "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<unset>}"

# ---------------------------------------------------------------- 1. build
t0=$(date +%s)
if [ -z "$CUDA_HOME" ]; then
    record build FAILED "no CUDA toolkit (nvcc) in CUDA_HOME, /usr/local/cuda* or PATH"
else
    if ! "$PY" -c 'import ninja' > /dev/null 2>&1 && ! command -v ninja > /dev/null 2>&1; then
        log "ninja not found: torch compiles without it, one file at a time (slower)"
    fi
    log "building: MAX_JOBS=${MAX_JOBS:-16} LOSSOPT_BUILD=cuda $PY setup.py build_ext --inplace"
    MAX_JOBS=${MAX_JOBS:-16} LOSSOPT_BUILD=cuda timeout --kill-after=10 "$(limit 300 200)" \
        "$PY" setup.py build_ext --inplace > "$LOGDIR/build.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        record build ok "log build.log" $(( $(date +%s) - t0 ))
    else
        record build FAILED "exit $rc$([ $rc -eq 124 ] && echo ' (timed out)'), last lines of build.log below" $(( $(date +%s) - t0 ))
        tail -n 30 "$LOGDIR/build.log"
    fi
fi

# ---------------------------------------------------------------- 2. build_info
t0=$(date +%s)
BUILD_INFO=$("$PY" -c 'import json, lossopt_cuda; print(json.dumps(lossopt_cuda.build_info()))' 2> "$LOGDIR/build_info.err")
rc=$?
echo "${BUILD_INFO:-}" > "$LOGDIR/build_info.json"
log "build_info: ${BUILD_INFO:-<none>}"
if [ $rc -ne 0 ]; then
    record build_info FAILED "import failed: $(tail -n 1 "$LOGDIR/build_info.err")"
    BUILD_INFO="import failed: $(tail -n 1 "$LOGDIR/build_info.err")"
elif ! echo "$BUILD_INFO" | grep -q '"cuda": true'; then
    record build_info FAILED "the CUDA kernels are not in this build" $(( $(date +%s) - t0 ))
else
    record build_info ok "" $(( $(date +%s) - t0 ))
fi

# ---------------------------------------------------------------- 3. tests
t0=$(date +%s)
TEST_SUMMARY="not run"
TEST_FAILURES=""
if ! "$PY" -c 'import pytest' > /dev/null 2>&1; then
    for w in "${LOSSOPT_WHEELS:-}" .whl shared/wheels; do
        if [ -n "$w" ] && ls "$w"/pytest-*.whl > /dev/null 2>&1; then
            log "pytest missing: installing it from the local wheels in $w (pip --no-index)"
            "$PY" -m pip install --quiet --no-index --find-links "$w" --target "$TMPD/pydeps" pytest \
                > "$LOGDIR/pip_pytest.log" 2>&1 && export PYTHONPATH="$TMPD/pydeps:$PYTHONPATH"
            break
        fi
    done
fi
if ! "$PY" -c 'import pytest' > /dev/null 2>&1; then
    record tests FAILED "pytest is not importable by $PY and no local wheels of it were found (LOSSOPT_WHEELS, .whl/, shared/wheels/); install pytest, or carry its wheels"
else
    CONFTEST_OPT=()
    if ! "$PY" -c 'import hypothesis' > /dev/null 2>&1; then
        log "hypothesis missing: running with --noconftest (tests/test_cuda.py does not use conftest)"
        CONFTEST_OPT=(--noconftest)
    fi
    log "running tests/test_cuda.py (log: $LOGDIR/test_cuda.log)"
    timeout --kill-after=10 "$(limit 330 100)" "$PY" -m pytest tests/test_cuda.py -v -m cuda -rfEs \
        -p no:cacheprovider ${CONFTEST_OPT[@]+"${CONFTEST_OPT[@]}"} --durations=15 \
        --junitxml="$LOGDIR/test_cuda.xml" > "$LOGDIR/test_cuda.log" 2>&1
    rc=$?
    TEST_SUMMARY=$(grep -E '^=+ .*[0-9]+ (passed|failed|error|errors|skipped|deselected).* in [0-9.]+s' "$LOGDIR/test_cuda.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    TEST_FAILURES=$(grep -E '^(FAILED|ERROR) ' "$LOGDIR/test_cuda.log" | head -n 60)
    if [ -z "$TEST_SUMMARY" ]; then  # killed (timeout) or crashed: count the -v result lines
        TEST_SUMMARY="no pytest summary line (exit $rc); results so far: $(grep -cE ' PASSED( |$)' "$LOGDIR/test_cuda.log") passed, $(grep -cE ' FAILED( |$)' "$LOGDIR/test_cuda.log") failed, $(grep -cE ' ERROR( |$)' "$LOGDIR/test_cuda.log") errors, $(grep -cE ' SKIPPED( |$)' "$LOGDIR/test_cuda.log") skipped; last test started: $(grep -E '^tests/test_cuda.py::' "$LOGDIR/test_cuda.log" | tail -n 1 | cut -c1-160)"
        TEST_FAILURES=$(grep -E ' (FAILED|ERROR)( |$)' "$LOGDIR/test_cuda.log" | head -n 60)
    fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        record tests FAILED "timed out; $TEST_SUMMARY" $(( $(date +%s) - t0 ))
    elif [ $rc -ne 0 ]; then
        record tests FAILED "pytest exit $rc: $TEST_SUMMARY" $(( $(date +%s) - t0 ))
    elif ! echo "$TEST_SUMMARY" | grep -qE '[0-9]+ passed'; then
        record tests FAILED "no test ran (all skipped?): $TEST_SUMMARY" $(( $(date +%s) - t0 ))
    else
        record tests ok "$TEST_SUMMARY" $(( $(date +%s) - t0 ))
    fi
    tail -n 25 "$LOGDIR/test_cuda.log"
fi

# ---------------------------------------------------------------- 4. compute-sanitizer
t0=$(date +%s)
SANITIZER_SUMMARY="not run"
SAN=$(command -v compute-sanitizer 2>/dev/null)
for c in "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" "${CUDA_HOME:-/nonexistent}/compute-sanitizer/compute-sanitizer"; do
    if [ -z "$SAN" ] && [ -x "$c" ]; then SAN=$c; fi
done
cat > "$TMPD/sanitize_ops.py" <<'PY'
# Every fused CUDA op (advance and update) once or twice, on odd sizes, a
# misaligned tensor, a transposed (dense) one and an empty one, for each
# parameter dtype, with and without master weights.
import torch
import lossopt_cuda
from lossopt_cuda import AdaLo, AdaLoss, AdamL

assert lossopt_cuda.build_info()["cuda"], lossopt_cuda.build_info()
dev = torch.device("cuda")


def params(dtype):
    out = [torch.randn(n, device=dev).to(dtype) for n in (1, 3, 5, 65537)]
    out.append(torch.empty(1001 + 1, device=dev, dtype=dtype)[1:].normal_())  # misaligned
    out.append(torch.randn(47, 33, device=dev).to(dtype).t())                 # dense, transposed
    out.append(torch.empty(0, device=dev, dtype=dtype))
    out = [p.detach().requires_grad_() for p in out]
    for p in out:
        p.grad = torch.randn_like(p)
    return out


cases = [
    (AdaLo, dict(mode="adversarial", betas=(0.5, 0.0), kappa=1.0, weight_decay=0.1)),
    (AdaLo, dict(mode="compliant")),
    (AdamL, dict(lr=1e-2, normalize_loss=True, weight_decay=0.1)),
    (AdaLoss, dict(lr=0.1, weight_decay=0.01)),
    (AdaLoss, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
]
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    masters = (False, True) if dtype != torch.float32 else (False,)
    for (cls, hp), master in [(c, m) for c in cases for m in masters]:
        ps = params(dtype)
        opt = cls(ps, fused=True, master_weights=master, **hp)
        for loss in (1.5, 0.7, float("nan")):
            opt.step(loss=torch.tensor(loss, device=dev))
        torch.cuda.synchronize()
        assert all(bool(torch.isfinite(p).all()) for p in ps), (cls.__name__, dtype)
        assert opt.skipped_steps == 1
        print(cls.__name__, hp, dtype, "master" if master else "", "ok", flush=True)
print("SANITIZE-OK")
PY
if [ -z "$SAN" ]; then
    record sanitizer FAILED "compute-sanitizer not found (PATH, \$CUDA_HOME/bin, \$CUDA_HOME/compute-sanitizer)"
    SANITIZER_SUMMARY="compute-sanitizer not found"
elif (( $(left 20) < 30 )); then
    record sanitizer FAILED "skipped: out of time budget"
    SANITIZER_SUMMARY="skipped: out of time"
else
    log "compute-sanitizer --tool memcheck (log: $LOGDIR/sanitizer.log)"
    # No caching allocator: every tensor is its own allocation, so an access
    # past a tensor's end is outside any allocation and memcheck sees it.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=10 "$(limit 180 20)" \
        "$SAN" --tool memcheck --report-api-errors no --error-exitcode 99 --print-limit 100 \
        "$PY" "$TMPD/sanitize_ops.py" > "$LOGDIR/sanitizer.log" 2>&1
    rc=$?
    cp "$TMPD/sanitize_ops.py" "$LOGDIR/sanitize_ops.py"
    SANITIZER_SUMMARY=$(grep -E 'ERROR SUMMARY' "$LOGDIR/sanitizer.log" | tail -n 1 | sed -E 's/^=+ *//')
    [ -n "$SANITIZER_SUMMARY" ] || SANITIZER_SUMMARY="no ERROR SUMMARY line (exit $rc)"
    if [ $rc -eq 0 ] && grep -q '^SANITIZE-OK' "$LOGDIR/sanitizer.log" && echo "$SANITIZER_SUMMARY" | grep -q ' 0 errors'; then
        record sanitizer ok "$SANITIZER_SUMMARY" $(( $(date +%s) - t0 ))
    else
        record sanitizer FAILED "exit $rc$([ $rc -eq 124 ] && echo ' (timed out)'): $SANITIZER_SUMMARY" $(( $(date +%s) - t0 ))
        tail -n 40 "$LOGDIR/sanitizer.log"
    fi
fi

# ---------------------------------------------------------------- 5. benchmark
t0=$(date +%s)
BENCH_JSON=$RESULTS/gpu_${DEVICE_SLUG}_${STAMP}.json
BENCH_NOTE=""
if [ ! -f benchmarks/step_time.py ]; then
    record benchmark skipped "benchmarks/step_time.py does not exist"
elif ! timeout 120 "$PY" benchmarks/step_time.py --help > "$LOGDIR/step_time_help.txt" 2>&1; then
    record benchmark FAILED "benchmarks/step_time.py --help failed (see step_time_help.txt)"
elif ! grep -q -- '--out' "$LOGDIR/step_time_help.txt"; then
    record benchmark skipped "benchmarks/step_time.py has no --out option"
elif (( $(left 10) < 30 )); then
    record benchmark skipped "out of time budget"
else
    # Only the GPU, and the short sweep, to fit the time budget (when the script
    # has those options); STEP_TIME_ARGS replaces these (set it empty for the full sweep).
    if [ -z "${STEP_TIME_ARGS+set}" ]; then
        STEP_TIME_ARGS=""
        if grep -q -- '--device' "$LOGDIR/step_time_help.txt" && grep -q 'cuda' "$LOGDIR/step_time_help.txt"; then
            STEP_TIME_ARGS="--device cuda"
        fi
        if grep -q -- '--quick' "$LOGDIR/step_time_help.txt"; then
            STEP_TIME_ARGS="$STEP_TIME_ARGS --quick"
        fi
    fi
    log "benchmark: $PY benchmarks/step_time.py $STEP_TIME_ARGS --out $BENCH_JSON"
    # shellcheck disable=SC2086  # STEP_TIME_ARGS is a list of options
    timeout --kill-after=10 "$(limit 240 10)" "$PY" benchmarks/step_time.py $STEP_TIME_ARGS --out "$BENCH_JSON" \
        > "$LOGDIR/step_time.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && [ -f "$BENCH_JSON" ]; then
        record benchmark ok "$BENCH_JSON (options: ${STEP_TIME_ARGS:-none})" $(( $(date +%s) - t0 ))
        BENCH_NOTE=$BENCH_JSON
    else
        record benchmark FAILED "exit $rc$([ $rc -eq 124 ] && echo ' (timed out)'), options: ${STEP_TIME_ARGS:-none}, see step_time.log" $(( $(date +%s) - t0 ))
        tr '\r' '\n' < "$LOGDIR/step_time.log" | tail -n 20
    fi
fi

# ---------------------------------------------------------------- 6. summary
{
    echo "# GPU check $DATE_HUMAN"
    echo
    echo "- Device: $DEVICE_NAME (driver ${DRIVER:-unknown})"
    echo "- Date: $DATE_HUMAN"
    echo "- Git commit: $COMMIT (uncommitted changes: $DIRTY files)"
    echo "- $PY_LINE"
    echo "- $TORCH_LINE"
    echo "- CUDA_HOME: ${CUDA_HOME:-none} ($NVCC_VERSION); TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}"
    echo "- Total time: $(( $(date +%s) - START )) s (budget $BUDGET s)"
    echo "- Logs: $LOGDIR/"
    echo
    echo "## build_info()"
    echo
    echo '```'
    echo "${BUILD_INFO:-none}"
    echo '```'
    echo
    echo "## Steps"
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | --- |"
    for s in "${STEPS[@]}"; do
        echo "| $s | $(echo "${STATUS[$s]}" | tr '|' '/') | ${SECONDS_TAKEN[$s]:-} |"
    done
    echo
    echo "## Tests (tests/test_cuda.py -m cuda)"
    echo
    echo "$TEST_SUMMARY"
    if [ -n "$TEST_FAILURES" ]; then
        echo
        echo '```'
        echo "$TEST_FAILURES"
        echo '```'
    fi
    echo
    echo "## compute-sanitizer memcheck (all fused ops, fp32/fp16/bf16, with and without master weights)"
    echo
    echo "$SANITIZER_SUMMARY"
    echo
    echo "## Benchmark"
    echo
    echo "${STATUS[benchmark]:-not run}"
    echo
    if (( N_FAILED > 0 )); then echo "**$N_FAILED step(s) failed.**"; else echo "All steps passed."; fi
} > "$SUMMARY"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp -r "$LOGDIR" "$OUT/" && cp "$SUMMARY" "$OUT/"
    if [ -n "$BENCH_NOTE" ] && [ -f "$BENCH_NOTE" ]; then cp "$BENCH_NOTE" "$OUT/"; fi
    log "copied the summary and logs to $OUT"
fi

echo
cat "$SUMMARY"
if (( N_FAILED > 0 )); then exit 1; fi
exit 0
