#!/usr/bin/env bash
# GPU check, run from anywhere on a machine with an NVIDIA GPU, python3 with a
# CUDA build of torch, the CUDA toolkit, and no network:
#
#   1. build the extension in place for this GPU (LOSSOPT_BUILD=cuda: a build
#      without the CUDA kernels is an error), CPU kernels only for this CPU's
#      instruction set (LOSSOPT_CPU_ISAS, below);
#   2. print build_info();
#   3. run tests/test_cuda.py (-m cuda), junit xml + log; in parallel with
#      pytest-xdist where it is installed (-n <cores, at most 16> --dist load:
#      the tests are all in one file, so --dist loadfile would use one worker);
#   4. compute-sanitizer memcheck on a small script calling all three fused ops
#      (a sanitizer that refuses this device, host or driver, "... not
#      supported", is recorded as skipped, and the script then runs once
#      without it);
#   5. benchmarks/step_time.py --out ..., if that script exists and takes --out;
#   5b. the CUDA kernels of a plain install, compiled with NVRTC (a copy of the
#      package without compiled modules, `python -m lossopt_cuda.build`), and
#      tests/test_cuda.py on them, with what is left of the budget;
#   6. write benchmarks/results/gpu_check_<stamp>.md and, when OUT is set, put
#      in $OUT at most 8 files: the summary, the benchmark JSON (if any),
#      test_cuda.log, and gpu_check_<stamp>.tar.gz holding everything else
#      (the log folder: build log, junit xml, sanitizer log, env, nvidia-smi ...).
#
# Every step runs even if an earlier one failed; the exit status is 1 if any
# step failed. Everything fits in GPU_CHECK_BUDGET seconds (default 450: with
# machine start-up the whole device lease stays under 15 minutes). Each step's
# timeout is capped by what is left of the budget, minus a reserve for the
# steps after it (build <= 200 s, tests <= 150 s, sanitizer <= 60 s,
# benchmark <= 60 s).
#
# On the lent device machine the tool runs the command in the repository root
# with $OUT exported; .git may not travel, so the command carries the commit.
# Commit first, then give the tool (timeout_s=540) this command, with <sha>
# replaced by the output of `git rev-parse HEAD` in your checkout:
#
#   LOSSOPT_COMMIT=<sha> bash scripts/gpu_check.sh
#
# Without .git and LOSSOPT_COMMIT the summary says "unknown". Then commit what
# comes back (the summary and JSON under benchmarks/results/) and give the
# machine back.
#
# Nothing is installed from the network. pytest must be importable; if it is
# not, wheels of pytest (and its dependencies) in $LOSSOPT_WHEELS, .whl/ or
# shared/wheels/ are installed into a temporary folder with pip --no-index.
# Without hypothesis (needed by tests/conftest.py) the test file runs with
# --noconftest (it needs nothing from conftest).
#
# Environment: PYTHON (default python3), CUDA_HOME, TORCH_CUDA_ARCH_LIST
# (default: this GPU's compute capability), MAX_JOBS (default 16),
# LOSSOPT_CPU_ISAS (CPU kernel instruction sets setup.py builds, comma
# separated from DEFAULT,AVX2,AVX512; default: the one torch picks on this
# machine, torch.backends.cpu.get_cpu_capability(), DEFAULT for anything other
# than AVX2/AVX512), PYTEST_ADDOPTS (extra pytest options, e.g. "-x" or
# "-k 'not 2_31'"), PYTEST_WORKERS (pytest-xdist workers; default: the number
# of cores, at most 16; 0 runs serially), STEP_TIME_ARGS (options of
# benchmarks/step_time.py besides --out; default "--device cuda --quick" where
# it has them), GPU_CHECK_BUDGET (seconds, default 450), LOSSOPT_COMMIT (the
# commit to name when .git is absent), LOSSOPT_WHEELS, OUT.
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || { echo "gpu_check: cannot cd to the repository root" >&2; exit 2; }
ROOT=$(pwd -P)  # physical, as git rev-parse --show-toplevel prints it
PY=${PYTHON:-python3}
PY=$(command -v "$PY" 2>/dev/null || echo "$PY")  # absolute: some steps run elsewhere
case $PY in /*) ;; *) PY=$ROOT/$PY ;; esac
BUDGET=${GPU_CHECK_BUDGET:-450}
START=$(date +%s)
# The commit and the count of uncommitted files, before this script writes
# anything (its own logs would count as untracked files). Only a .git of this
# very folder counts (not one of a folder above a copy of the tree).
COMMIT="" DIRTY="unknown (no .git)" COMMIT_SOURCE=""
if [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$ROOT" ] && COMMIT=$(git rev-parse HEAD 2>/dev/null); then
    DIRTY=$(git status --porcelain 2>/dev/null | wc -l | tr -d ' ')
    COMMIT_SOURCE="git"
    if [ -n "${LOSSOPT_COMMIT:-}" ] && [ "${LOSSOPT_COMMIT}" != "$COMMIT" ]; then
        COMMIT_SOURCE="git; LOSSOPT_COMMIT=$LOSSOPT_COMMIT differs"
    fi
elif [ -n "${LOSSOPT_COMMIT:-}" ]; then
    COMMIT=$LOSSOPT_COMMIT COMMIT_SOURCE="LOSSOPT_COMMIT"
else
    COMMIT=unknown COMMIT_SOURCE="no .git and no LOSSOPT_COMMIT"
fi
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
DEVICE_NAME=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
DRIVER=$(timeout 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
timeout 20 nvidia-smi > "$LOGDIR/nvidia-smi.txt" 2>&1
if [ -z "$DEVICE_NAME" ]; then
    DEVICE_NAME=$(timeout 60 "$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo unknown)
fi
DEVICE_SLUG=$(echo "$DEVICE_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/_/g; s/^_+//; s/_+$//')
[ -n "$DEVICE_SLUG" ] || DEVICE_SLUG=unknown
log "device: $DEVICE_NAME (driver ${DRIVER:-unknown}); commit $COMMIT ($COMMIT_SOURCE); uncommitted files: $DIRTY"

t0=$(date +%s)
if timeout 60 "$PY" - > "$LOGDIR/env.txt" 2>&1 <<'PY'
import platform, sys
import torch
print("python", sys.version.replace("\n", " "), platform.platform())
print("torch", torch.__version__, "built with CUDA", torch.version.cuda)
print("cuda available", torch.cuda.is_available())
print("cpu capability", torch.backends.cpu.get_cpu_capability())
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
    TORCH_CUDA_ARCH_LIST=$(timeout 60 "$PY" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(f"{M}.{m}")' 2>/dev/null)
fi
export TORCH_CUDA_ARCH_LIST
log "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<unset>}"

# CPU kernels: only the instruction set torch runs here (the package imports
# that module, or _cpu_default where there is no module of torch's capability),
# to save build time; setup.py builds every ISA when LOSSOPT_CPU_ISAS is unset.
if [ -n "${LOSSOPT_CPU_ISAS:-}" ]; then
    CPU_ISAS_NOTE="$LOSSOPT_CPU_ISAS (set by the caller)"
else
    CPU_CAP=$(timeout 60 "$PY" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())' 2>/dev/null | tail -n 1)
    case "$CPU_CAP" in
        DEFAULT|AVX2|AVX512) LOSSOPT_CPU_ISAS=$CPU_CAP ;;
        "") LOSSOPT_CPU_ISAS="" ;;
        *) LOSSOPT_CPU_ISAS=DEFAULT ;;
    esac
    if [ -n "$LOSSOPT_CPU_ISAS" ]; then
        CPU_ISAS_NOTE="$LOSSOPT_CPU_ISAS (torch's CPU capability here: $CPU_CAP)"
    else
        CPU_ISAS_NOTE="unset: every ISA (torch's CPU capability unknown)"
    fi
fi
if [ -n "${LOSSOPT_CPU_ISAS:-}" ]; then export LOSSOPT_CPU_ISAS; else unset LOSSOPT_CPU_ISAS; fi
log "LOSSOPT_CPU_ISAS=$CPU_ISAS_NOTE"

# ---------------------------------------------------------------- 1. build
t0=$(date +%s)
if [ -z "$CUDA_HOME" ]; then
    record build FAILED "no CUDA toolkit (nvcc) in CUDA_HOME, /usr/local/cuda* or PATH"
else
    if ! "$PY" -c 'import ninja' > /dev/null 2>&1 && ! command -v ninja > /dev/null 2>&1; then
        log "ninja not found: torch compiles without it, one file at a time (slower)"
    fi
    log "building: MAX_JOBS=${MAX_JOBS:-16} LOSSOPT_BUILD=cuda LOSSOPT_CPU_ISAS=${LOSSOPT_CPU_ISAS:-<all>} $PY setup.py build_ext --inplace"
    # at most 200 s, leaving 210 s for build_info, tests, sanitizer and benchmark
    MAX_JOBS=${MAX_JOBS:-16} LOSSOPT_BUILD=cuda timeout --kill-after=5 "$(limit 200 210)" \
        "$PY" setup.py build_ext --inplace > "$LOGDIR/build.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && grep -q 'lossopt-cuda build: building pure Python' "$LOGDIR/build.log"; then
        # setup.py exits 0 without compiling anything when, e.g., torch is missing
        record build FAILED "nothing compiled: $(grep -o 'building pure Python.*' "$LOGDIR/build.log" | head -n 1 | cut -c1-200)" $(( $(date +%s) - t0 ))
    elif [ $rc -eq 0 ]; then
        record build ok "log build.log" $(( $(date +%s) - t0 ))
    else
        record build FAILED "exit $rc$( (( rc == 124 || rc == 137 )) && echo ' (timed out)'), last lines of build.log below" $(( $(date +%s) - t0 ))
        tail -n 30 "$LOGDIR/build.log"
    fi
fi

# ---------------------------------------------------------------- 2. build_info
t0=$(date +%s)
BUILD_INFO=$(timeout "$(limit 60 0)" "$PY" -c 'import json, lossopt_cuda; print(json.dumps(lossopt_cuda.build_info()))' 2> "$LOGDIR/build_info.err")
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
elif (( $(left 0) < 30 )); then
    record tests FAILED "not run: out of time budget ($(left 0) s left)"
    TEST_SUMMARY="not run: out of time budget"
else
    CONFTEST_OPT=()
    if ! "$PY" -c 'import hypothesis' > /dev/null 2>&1; then
        log "hypothesis missing: running with --noconftest (tests/test_cuda.py does not use conftest)"
        CONFTEST_OPT=(--noconftest)
    fi
    # pytest-xdist where installed: -n <cores, at most 16>. --dist load, not
    # loadfile: every test is in one file, which loadfile gives to one worker.
    XDIST_OPT=()
    CORES=$(nproc 2>/dev/null || echo 1)
    WORKERS=${PYTEST_WORKERS:-$(( CORES < 16 ? CORES : 16 ))}
    TEST_THREADS=$CORES
    if (( WORKERS > 1 )) && "$PY" -c 'import xdist' > /dev/null 2>&1; then
        XDIST_OPT=(-n "$WORKERS" --dist load)
        TEST_MODE="pytest-xdist, $WORKERS workers"
        # the CPU oracle runs in every worker: share the cores, do not oversubscribe them
        TEST_THREADS=$(( CORES / WORKERS > 0 ? CORES / WORKERS : 1 ))
    elif (( WORKERS > 1 )); then
        TEST_MODE="serial: pytest-xdist not installed"
    else
        TEST_MODE="serial"
    fi
    TEST_THREADS=${OMP_NUM_THREADS:-$TEST_THREADS}
    log "running tests/test_cuda.py ($TEST_MODE, OMP_NUM_THREADS=$TEST_THREADS; log: $LOGDIR/test_cuda.log)"
    # at most 150 s, leaving 105 s for the sanitizer and the benchmark
    OMP_NUM_THREADS=$TEST_THREADS timeout --kill-after=5 "$(limit 150 105)" "$PY" -m pytest tests/test_cuda.py -v -m cuda -rfEs \
        -p no:cacheprovider ${XDIST_OPT[@]+"${XDIST_OPT[@]}"} ${CONFTEST_OPT[@]+"${CONFTEST_OPT[@]}"} --durations=15 \
        --junitxml="$LOGDIR/test_cuda.xml" > "$LOGDIR/test_cuda.log" 2>&1
    rc=$?
    TEST_SUMMARY=$(grep -E '^=+ .*[0-9]+ (passed|failed|error|errors|skipped|deselected).* in [0-9.]+s' "$LOGDIR/test_cuda.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    TEST_FAILURES=$(grep -E '^(FAILED|ERROR) ' "$LOGDIR/test_cuda.log" | head -n 60)
    if [ -z "$TEST_SUMMARY" ]; then  # killed (timeout) or crashed: count the -v result lines
        TEST_SUMMARY="no pytest summary line (exit $rc); results so far: $(grep -cE ' PASSED( |$)' "$LOGDIR/test_cuda.log") passed, $(grep -cE ' FAILED( |$)' "$LOGDIR/test_cuda.log") failed, $(grep -cE ' ERROR( |$)' "$LOGDIR/test_cuda.log") errors, $(grep -cE ' SKIPPED( |$)' "$LOGDIR/test_cuda.log") skipped; last test started: $(grep -oE 'tests/test_cuda.py::[^ ]+' "$LOGDIR/test_cuda.log" | tail -n 1 | cut -c1-160)"
        TEST_FAILURES=$(grep -E ' (FAILED|ERROR)( |$)' "$LOGDIR/test_cuda.log" | head -n 60)
    fi
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        record tests FAILED "timed out; $TEST_SUMMARY ($TEST_MODE)" $(( $(date +%s) - t0 ))
    elif [ $rc -ne 0 ]; then
        record tests FAILED "pytest exit $rc: $TEST_SUMMARY ($TEST_MODE)" $(( $(date +%s) - t0 ))
    elif ! echo "$TEST_SUMMARY" | grep -qE '[0-9]+ passed'; then
        record tests FAILED "no test ran (all skipped?): $TEST_SUMMARY" $(( $(date +%s) - t0 ))
    else
        record tests ok "$TEST_SUMMARY ($TEST_MODE)" $(( $(date +%s) - t0 ))
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
elif (( $(left 45) < 20 )); then
    record sanitizer FAILED "skipped: out of time budget"
    SANITIZER_SUMMARY="skipped: out of time"
else
    log "compute-sanitizer --tool memcheck (log: $LOGDIR/sanitizer.log)"
    cp "$TMPD/sanitize_ops.py" "$LOGDIR/sanitize_ops.py"
    # No caching allocator: every tensor is its own allocation, so an access
    # past a tensor's end is outside any allocation and memcheck sees it.
    # At most 60 s, leaving 45 s for the benchmark.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=5 "$(limit 60 45)" \
        "$SAN" --tool memcheck --report-api-errors no --error-exitcode 99 --print-limit 100 \
        "$PY" "$TMPD/sanitize_ops.py" > "$LOGDIR/sanitizer.log" 2>&1
    rc=$?
    SANITIZER_SUMMARY=$(grep -E 'ERROR SUMMARY' "$LOGDIR/sanitizer.log" | tail -n 1 | sed -E 's/^=+ *//')
    [ -n "$SANITIZER_SUMMARY" ] || SANITIZER_SUMMARY="no ERROR SUMMARY line (exit $rc)"
    # A sanitizer that refuses this GPU (one newer than it knows), host or
    # driver says so on its own "=====" lines ("Device not supported", "...
    # is not supported", "Unsupported ..."): that is a gap of the tool, not a
    # fault of the kernels. Only the sanitizer's lines count, so an error of
    # the script (a Python traceback) is never taken for a refusal.
    REFUSAL=$(grep -E '^=+ ' "$LOGDIR/sanitizer.log" | grep -iE 'not supported|unsupported|not compatible|incompatible' | head -n 1 | sed -E 's/^=+ *//' | cut -c1-200)
    if [ -n "$REFUSAL" ]; then
        # Refused: nothing was checked, whatever the exit status says. The ops
        # once without the sanitizer, unless it already ran them unchecked.
        if grep -q '^SANITIZE-OK' "$LOGDIR/sanitizer.log"; then
            cp "$LOGDIR/sanitizer.log" "$LOGDIR/sanitize_ops_plain.log"
            prc=0
        else
            timeout --kill-after=5 "$(limit 30 45)" "$PY" "$TMPD/sanitize_ops.py" > "$LOGDIR/sanitize_ops_plain.log" 2>&1
            prc=$?
        fi
        if [ $prc -eq 0 ] && grep -q '^SANITIZE-OK' "$LOGDIR/sanitize_ops_plain.log"; then
            SANITIZER_SUMMARY="skipped: compute-sanitizer refused: $REFUSAL (the ops without it: ok)"
            record sanitizer skipped "compute-sanitizer refused: $REFUSAL; the ops without it: ok" $(( $(date +%s) - t0 ))
        else
            SANITIZER_SUMMARY="skipped: compute-sanitizer refused: $REFUSAL; the ops without it FAILED (exit $prc, sanitize_ops_plain.log)"
            record sanitizer FAILED "compute-sanitizer refused ($REFUSAL) and the ops without it failed: exit $prc, see sanitize_ops_plain.log" $(( $(date +%s) - t0 ))
            tail -n 40 "$LOGDIR/sanitize_ops_plain.log"
        fi
        tail -n 10 "$LOGDIR/sanitizer.log"
    elif [ $rc -eq 0 ] && grep -q '^SANITIZE-OK' "$LOGDIR/sanitizer.log" && echo "$SANITIZER_SUMMARY" | grep -q ' 0 errors'; then
        record sanitizer ok "$SANITIZER_SUMMARY" $(( $(date +%s) - t0 ))
    else
        record sanitizer FAILED "exit $rc$( (( rc == 124 || rc == 137 )) && echo ' (timed out)'): $SANITIZER_SUMMARY" $(( $(date +%s) - t0 ))
        tail -n 40 "$LOGDIR/sanitizer.log"
    fi
fi

# ---------------------------------------------------------------- 5. benchmark
t0=$(date +%s)
BENCH_JSON=$RESULTS/gpu_${DEVICE_SLUG}_${STAMP}.json
BENCH_NOTE=""
if [ ! -f benchmarks/step_time.py ]; then
    record benchmark skipped "benchmarks/step_time.py does not exist"
elif ! timeout "$(limit 30 0)" "$PY" benchmarks/step_time.py --help > "$LOGDIR/step_time_help.txt" 2>&1; then
    record benchmark FAILED "benchmarks/step_time.py --help failed (see step_time_help.txt)"
elif ! grep -q -- '--out' "$LOGDIR/step_time_help.txt"; then
    record benchmark skipped "benchmarks/step_time.py has no --out option"
elif (( $(left 10) < 20 )); then
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
    # at most 60 s, leaving 10 s for the summary
    timeout --kill-after=5 "$(limit 60 10)" "$PY" benchmarks/step_time.py $STEP_TIME_ARGS --out "$BENCH_JSON" \
        > "$LOGDIR/step_time.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && [ -f "$BENCH_JSON" ]; then
        record benchmark ok "$BENCH_JSON (options: ${STEP_TIME_ARGS:-none})" $(( $(date +%s) - t0 ))
        BENCH_NOTE=$BENCH_JSON
    else
        record benchmark FAILED "exit $rc$( (( rc == 124 || rc == 137 )) && echo ' (timed out)'), options: ${STEP_TIME_ARGS:-none}, see step_time.log" $(( $(date +%s) - t0 ))
        tr '\r' '\n' < "$LOGDIR/step_time.log" | tail -n 20
    fi
fi

# ---------------------------------------------------------------- 5b. NVRTC
# The CUDA kernels as a plain `pip install` gets them where there is no nvcc:
# compiled with NVRTC on first use (lossopt_cuda/_nvrtc.py). A copy of the
# package without any compiled module (as a plain install lays it out), built
# with `python -m lossopt_cuda.build` into a fresh cache, then
# tests/test_cuda.py on it, run from outside the tree.
t0=$(date +%s)
NVRTC_SUMMARY="not run"
if (( $(left 0) < 60 )); then
    record nvrtc skipped "out of time budget ($(left 0) s left)"
    NVRTC_SUMMARY="not run: out of time budget"
else
    NV_SITE=$TMPD/nvrtc_site
    mkdir -p "$NV_SITE"
    tar --exclude='*.so' --exclude='__pycache__' --exclude='_build_record.json' -cf - lossopt_cuda | tar -xf - -C "$NV_SITE"
    cp -r csrc "$NV_SITE/lossopt_cuda/_csrc"
    NV_PYTHONPATH=$NV_SITE${PYTHONPATH#"$ROOT"}  # the tree's own package off the path
    log "NVRTC: building into a fresh cache, then tests/test_cuda.py on it (log: $LOGDIR/test_cuda_nvrtc.log)"
    (cd "$TMPD" && PYTHONPATH=$NV_PYTHONPATH LOSSOPT_CACHE_DIR="$TMPD/nvrtc_cache" timeout --kill-after=5 "$(limit 90 0)" \
        "$PY" -m lossopt_cuda.build) > "$LOGDIR/nvrtc_build.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || ! grep -q '"cuda_source": "nvrtc"' "$LOGDIR/nvrtc_build.log"; then
        record nvrtc FAILED "python -m lossopt_cuda.build: exit $rc, no NVRTC kernels; see nvrtc_build.log: $(grep -m1 cuda_missing "$LOGDIR/nvrtc_build.log" | cut -c1-300)" $(( $(date +%s) - t0 ))
        NVRTC_SUMMARY="the NVRTC build failed (nvrtc_build.log)"
    else
        (cd "$TMPD" && PYTHONPATH=$NV_PYTHONPATH LOSSOPT_CACHE_DIR="$TMPD/nvrtc_cache" LOSSOPT_JIT=0 \
            OMP_NUM_THREADS=${TEST_THREADS:-1} timeout --kill-after=5 "$(limit 150 0)" \
            "$PY" -m pytest "$ROOT/tests/test_cuda.py" --rootdir "$ROOT" -q -m cuda -rfEs -p no:cacheprovider \
            ${XDIST_OPT[@]+"${XDIST_OPT[@]}"} ${CONFTEST_OPT[@]+"${CONFTEST_OPT[@]}"}) > "$LOGDIR/test_cuda_nvrtc.log" 2>&1
        rc=$?
        NVRTC_SUMMARY=$(grep -E '[0-9]+ (passed|failed|error|errors|skipped).* in [0-9.]+s' "$LOGDIR/test_cuda_nvrtc.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
        NVRTC_SUMMARY=${NVRTC_SUMMARY:-"no pytest summary line (exit $rc)"}
        if [ $rc -ne 0 ] || ! echo "$NVRTC_SUMMARY" | grep -qE '[0-9]+ passed'; then
            record nvrtc FAILED "pytest exit $rc: $NVRTC_SUMMARY" $(( $(date +%s) - t0 ))
            NVRTC_SUMMARY="$NVRTC_SUMMARY
$(grep -E '^(FAILED|ERROR) ' "$LOGDIR/test_cuda_nvrtc.log" | head -n 40)"
        else
            record nvrtc ok "$NVRTC_SUMMARY" $(( $(date +%s) - t0 ))
        fi
    fi
fi

# ---------------------------------------------------------------- 6. summary and $OUT
# At most 8 files come back from $OUT (the rest are dropped) and no folder
# does: the summary, the benchmark JSON, test_cuda.log, and one tarball of the
# whole log folder (build log, junit xml, sanitizer log, env, nvidia-smi ...).
MAX_OUT_FILES=8
TARBALL=gpu_check_$STAMP.tar.gz
OUT_FILES=()
if [ -n "${OUT:-}" ]; then
    t0=$(date +%s)
    OUT_PROBLEM=""
    mkdir -p "$OUT" || OUT_PROBLEM="cannot create $OUT; "
    if tar -czf "$TMPD/$TARBALL" -C "$RESULTS" "$(basename "$LOGDIR")" 2> "$TMPD/tar.err"; then
        OUT_FILES+=("$TMPD/$TARBALL")
    else
        OUT_PROBLEM="${OUT_PROBLEM}tar of $LOGDIR failed: $(tail -n 1 "$TMPD/tar.err"); "
    fi
    OUT_FILES+=("$SUMMARY")
    if [ -f "$LOGDIR/test_cuda.log" ]; then OUT_FILES+=("$LOGDIR/test_cuda.log"); fi
    if [ -n "$BENCH_NOTE" ] && [ -f "$BENCH_NOTE" ]; then OUT_FILES+=("$BENCH_NOTE"); fi
    OUT_BEFORE=$(find "$OUT" -mindepth 1 2>/dev/null | wc -l | tr -d ' ')
    OUT_PLANNED=$(( OUT_BEFORE + ${#OUT_FILES[@]} ))
    OUT_NAMES=$(for f in "${OUT_FILES[@]}"; do basename "$f"; done | paste -sd ' ' -)
    if (( OUT_PLANNED > MAX_OUT_FILES )); then
        echo "gpu_check: ERROR: $OUT would hold $OUT_PLANNED entries ($OUT_BEFORE already there + $OUT_NAMES), more than the $MAX_OUT_FILES that come back" >&2
        record summary FAILED "${OUT_PROBLEM}$OUT would hold $OUT_PLANNED entries ($OUT_BEFORE already there), more than $MAX_OUT_FILES: some would not come back" $(( $(date +%s) - t0 ))
    elif [ -n "$OUT_PROBLEM" ]; then
        record summary FAILED "${OUT_PROBLEM}files for $OUT: $OUT_NAMES" $(( $(date +%s) - t0 ))
    else
        record summary ok "$OUT_PLANNED files for \$OUT: $OUT_NAMES" $(( $(date +%s) - t0 ))
    fi
fi

{
    echo "# GPU check $DATE_HUMAN"
    echo
    echo "- Device: $DEVICE_NAME (driver ${DRIVER:-unknown})"
    echo "- Date: $DATE_HUMAN"
    if [[ $DIRTY =~ ^[0-9]+$ ]]; then DIRTY_NOTE="$DIRTY files"; else DIRTY_NOTE=$DIRTY; fi
    echo "- Git commit: $COMMIT (from $COMMIT_SOURCE; uncommitted changes: $DIRTY_NOTE)"
    echo "- $PY_LINE"
    echo "- $TORCH_LINE"
    echo "- CUDA_HOME: ${CUDA_HOME:-none} ($NVCC_VERSION); TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}"
    echo "- CPU kernels built for LOSSOPT_CPU_ISAS=$CPU_ISAS_NOTE"
    echo "- Tests: ${TEST_MODE:-not run}"
    echo "- Total time: $(( $(date +%s) - START )) s (budget $BUDGET s)"
    echo "- Logs: $LOGDIR/${OUT:+ (in \$OUT: $TARBALL)}"
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
    echo "## Tests on the NVRTC-compiled kernels (a plain install's, no nvcc)"
    echo
    echo "$NVRTC_SUMMARY"
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
    # plain files only, never a folder
    for f in "${OUT_FILES[@]}"; do
        cp "$f" "$OUT/" || echo "gpu_check: ERROR: could not copy $f to $OUT" >&2
    done
    N_OUT=$(find "$OUT" -mindepth 1 | wc -l | tr -d ' ')
    N_OUT_FILES=$(find "$OUT" -type f | wc -l | tr -d ' ')
    log "copied to $OUT: $N_OUT entries ($N_OUT_FILES files, at most $MAX_OUT_FILES come back): $(cd "$OUT" && find . -mindepth 1 | sed 's|^\./||' | sort | paste -sd ' ' -)"
    if (( N_OUT > MAX_OUT_FILES )) || (( N_OUT != N_OUT_FILES )); then
        MSG="ERROR: $OUT holds $N_OUT entries ($N_OUT_FILES plain files): only $MAX_OUT_FILES plain files come back, some of these will be dropped"
        echo "gpu_check: $MSG" >&2
        printf '\n**%s**\n' "$MSG" | tee -a "$SUMMARY" >> "$OUT/$(basename "$SUMMARY")"
        N_FAILED=$((N_FAILED + 1))
    fi
fi

echo
cat "$SUMMARY"
if (( N_FAILED > 0 )); then exit 1; fi
exit 0
