#!/usr/bin/env bash
# One-shot GPU check: build the CUDA tokenizer, run the GPU tests, benchmark the kernel, run the
# whole pipeline on the GPU (torch backend on CUDA, FP16, CUDA tokenizer) beside the CPU path, and
# run the real-TensorRT tests where TensorRT is installed. Within 5 minutes on an H100/H200.
#
#   bash benchmarks/gpu_check.sh          # from the repository root on the GPU machine
#
# Logs go to $OUT if set, else ./gpu_check_out. The script runs under `set -euo pipefail`, but
# each step's failure is caught and recorded (PASS/FAIL/SKIP with its exit code) so every step
# runs and one run gives as much information as possible; a summary ends the output and the exit
# code is 1 when any step failed. Each step has its own time limit and all of them share one
# deadline (GPU_CHECK_BUDGET_S, default 290 s), so the script ends in time even if something hangs.
#
# Build: in place, `pip install -e .` with VBEDGE_CUDA=1 (fail loudly) and VBEDGE_CUDA_ARCHS=90
# (H100/H200 only, saves compile time; export another value to override). If setuptools is
# missing, the same nvcc/g++ commands as setup.py are run by hand. If pytest is missing, a copy
# carried in build/pytest_vendor (pure Python) is put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1
LOG="${OUT:-./gpu_check_out}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
export VBEDGE_CUDA=1
export VBEDGE_CUDA_ARCHS="${VBEDGE_CUDA_ARCHS:-90}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-290}))
declare -a NAMES CODES SECS

step() {  # step NAME LIMIT_S COMMAND...: run with a timeout, log to $LOG/NAME.log, record PASS/FAIL
    local name="$1" limit="$2"
    shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    echo
    echo "=================== $name (limit ${limit}s): $*"
    if [ "$limit" -lt 5 ]; then
        echo "SKIP $name: the overall deadline is reached"
        NAMES+=("$name"); CODES+=("skip"); SECS+=(0)
        return 0
    fi
    local t0=$SECONDS rc=0
    timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$LOG/$name.log" 2>&1 || rc=$?
    NAMES+=("$name"); CODES+=("$rc"); SECS+=("$((SECONDS - t0))")
    tail -n "${TAIL_LINES:-40}" "$LOG/$name.log" || true
    if [ "$rc" -eq 0 ]; then echo "PASS $name after $((SECONDS - t0)) s"; else echo "FAIL $name: exit $rc after $((SECONDS - t0)) s"; fi
    return 0
}

skip_step() {  # skip_step NAME REASON: record a step that cannot run here
    echo
    echo "=================== $1"
    echo "SKIP $1: $2"
    NAMES+=("$1"); CODES+=("skip"); SECS+=(0)
}

manual_build() {  # the commands setup.py runs, for a python without setuptools
    set -e
    local ext pyinc pbinc nvcc_bin cuda_home gencode=""
    ext=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    pyinc=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    pbinc=$($PY -c "import pybind11; print(pybind11.get_include())")
    nvcc_bin=$(command -v nvcc)
    cuda_home="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")}"
    [ -f "$cuda_home/include/cuda_runtime_api.h" ] || cuda_home=/usr/local/cuda
    for a in ${VBEDGE_CUDA_ARCHS//[;,]/ }; do gencode="$gencode -gencode arch=compute_$a,code=sm_$a"; done
    mkdir -p build/gpu_check_manual
    set -x
    nvcc -c kernels/cuda/cuda_tokenizer.cu -o build/gpu_check_manual/cuda_tokenizer.o -O3 -std=c++17 \
        -Xcompiler -fPIC,-fvisibility=hidden --expt-relaxed-constexpr $gencode -Ikernels/include
    g++ -O3 -std=c++17 -fPIC -fvisibility=hidden -shared kernels/bindings/cuda_module.cpp \
        build/gpu_check_manual/cuda_tokenizer.o -Ikernels/include -I"$pyinc" -I"$pbinc" -I"$cuda_home/include" \
        -L"$cuda_home/lib64" -L"$cuda_home/lib" -lcudart_static -ldl -lrt -lpthread -o "vbedge/_kernels_cuda$ext"
    g++ -O3 -std=c++17 -fPIC -fvisibility=hidden -ffp-contract=off -fopenmp -shared kernels/cpu/*.cpp \
        kernels/bindings/cpu_module.cpp -Ikernels/include -I"$pyinc" -I"$pbinc" -o "vbedge/_kernels$ext"
}
export -f manual_build
export PY

# 1. environment
step env 20 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv; \
  nvcc --version | tail -n 2; $PY --version; \
  $PY -c 'import numpy, pybind11; print(\"numpy\", numpy.__version__, \"pybind11\", pybind11.__version__)'; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())'; \
  $PY -c 'import cupy; print(\"cupy\", cupy.__version__)'; \
  $PY -c 'import setuptools; print(\"setuptools\", setuptools.__version__)'; \
  $PY -c 'import pytest; print(\"pytest\", pytest.__version__)'; nproc"

if ! $PY -c "import pytest" > /dev/null 2>&1 && [ -d build/pytest_vendor ]; then
    echo "pytest missing: using the carried copy in build/pytest_vendor"
    export PYTHONPATH="$PYTHONPATH:$PWD/build/pytest_vendor"
fi

# 2. build in place (CPU extension + CUDA extension)
if $PY -c "import setuptools" > /dev/null 2>&1; then
    # An editable install (as a user would do there) builds both extensions in place and maps
    # export/ and calib/ to vbedge.export / vbedge.calib, which the other tests import.
    TAIL_LINES=15 step build 150 "$PY" -m pip install -v --no-build-isolation --no-deps -e .
    # setup.py itself failing (old setuptools...) should not cost the run: build by hand instead.
    if [ "${CODES[-1]}" != "0" ]; then TAIL_LINES=15 step build_manual 100 bash -c manual_build; fi
else
    TAIL_LINES=15 step build_manual 120 bash -c manual_build
fi
step import 20 "$PY" -c "import vbedge._kernels_cuda as k; from vbedge.cuda_tokenizer import cuda_extension_status as s; print(k.probe(), s(), k.compute_capability(0))"

# Does a C++ exception thrown in nvcc-compiled code reach Python, with and without the GIL
# released? And one thrown out of a pybind11 constructor (the C++ tokenizer's, for a wrong shape)?
# (An exception thrown out of the CUDA tokenizer's constructor crashed setuptools builds on the
# H100; that constructor now reports errors instead. Each probe runs in its own process.)
step throw_diag 30 bash -c 'for g in False True; do $PY -c "import vbedge._kernels_cuda as k
try:
    k._throw_from_engine($g)
except RuntimeError as e:
    print(\"release_gil=$g: RuntimeError reached Python:\", e)"; echo "release_gil=$g: exit $?"; done
$PY -c "import numpy as np, vbedge._kernels as k
try:
    k.CpuTokenizer(np.zeros((5, 4), np.float32), 2, 3)
except ValueError as e:
    print(\"C++ tokenizer constructor: ValueError reached Python:\", e)"; echo "cpu constructor probe: exit $?"'

# 3. GPU tests (each file in its own process, so a crash in one does not hide the other), plus
# the C++ tokenizer tests (the CUDA tests compare against that kernel)
TAIL_LINES=30 step pytest_cuda 90 "$PY" -m pytest -q -rs -p no:cacheprovider --durations=5 tests/test_cuda_tokenizer.py
if [ -f tests/test_cpu_tokenizer.py ]; then TAIL_LINES=10 step pytest_cpu 45 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cpu_tokenizer.py; fi
# Other GPU tests (torch backend on CUDA...). Those needing the small test bundle skip with a reason
# where transformers or the MiniLM checkpoint package are missing.
step pytest_other_gpu 40 bash -c "$PY -m pytest -q -rs -p no:cacheprovider -m 'gpu and not tensorrt' tests --ignore=tests/test_cuda_tokenizer.py --ignore=tests/test_cpu_tokenizer.py; rc=\$?; [ \$rc -eq 5 ] && echo 'no other gpu tests' && exit 0; exit \$rc"

# 4. kernel benchmark
TAIL_LINES=25 step bench 60 "$PY" benchmarks/bench_tokenizer_gpu.py --json "$LOG/bench_tokenizer_gpu.json"

# 5. the pipeline end to end on the GPU beside the CPU path (synthetic weights and video; goal:
# clip->caption < 20 ms at FP16, tokens equal to the CPU path on >= 99% of clips)
TAIL_LINES=20 step pipeline_gpu 100 "$PY" benchmarks/bench_pipeline_gpu.py --clips "${PIPELINE_CLIPS:-12}" --json "$LOG/bench_pipeline_gpu.json"

# 6. real TensorRT, where it is installed (the lent machines' image has none so far)
if $PY -c "import tensorrt" > /dev/null 2>&1; then
    TAIL_LINES=30 step pytest_tensorrt 90 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_tensorrt_real.py tests/test_tensorrt_backend.py
else
    skip_step pytest_tensorrt "TensorRT's Python package does not import here ($($PY -c 'import tensorrt' 2>&1 | tail -n 1))"
fi

echo
echo "=================== summary (logs in $LOG, total $SECONDS s)"
FAILED=0
for i in "${!NAMES[@]}"; do
    verdict=PASS
    if [ "${CODES[$i]}" = "skip" ]; then verdict=SKIP; elif [ "${CODES[$i]}" != "0" ]; then verdict=FAIL; FAILED=1; fi
    printf "%-20s %-5s exit %-5s %5s s\n" "${NAMES[$i]}" "$verdict" "${CODES[$i]}" "${SECS[$i]}"
done
for f in pytest_cuda pytest_cpu pytest_tensorrt; do
    if [ -f "$LOG/$f.log" ]; then echo "$f: $(grep -E "passed|failed|error|Fatal" "$LOG/$f.log" | tail -n 1 || true)"; fi
done
if [ -f "$LOG/bench.log" ]; then grep -E "^\| |goal|N=1 end to end|generic kernel" "$LOG/bench.log" || true; fi
if [ -f "$LOG/pipeline_gpu.log" ]; then grep -E "^\| |goal|ratios|machine" "$LOG/pipeline_gpu.log" || true; fi
exit "$FAILED"
