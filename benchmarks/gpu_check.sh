#!/usr/bin/env bash
# One-shot GPU check for the CUDA tokenizer: build, test, benchmark, within about 4 minutes.
#
#   bash benchmarks/gpu_check.sh          # from the repository root on the GPU machine
#
# Logs go to $OUT if set, else ./gpu_check_out. Every step runs even when an earlier one failed
# (set +e), its exit code is recorded, and a summary ends the output, so one run gives as much
# information as possible. Each step has its own time limit and all of them share one deadline
# (GPU_CHECK_BUDGET_S, default 225 s), so the script ends in time even if something hangs.
#
# Build: in place, `python3 setup.py build_ext --inplace` with VBEDGE_CUDA=1 (fail loudly) and
# VBEDGE_CUDA_ARCHS=90 (H100 only, saves compile time; export another value to override). If
# setuptools is missing, the same nvcc/g++ commands as setup.py are run by hand. If pytest is
# missing, a copy carried in build/pytest_vendor (pure Python) is put on PYTHONPATH.
set +e
set -u
cd "$(dirname "$0")/.." || exit 1
LOG="${OUT:-./gpu_check_out}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
export VBEDGE_CUDA=1
export VBEDGE_CUDA_ARCHS="${VBEDGE_CUDA_ARCHS:-90}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-225}))
declare -a NAMES CODES SECS

step() {  # step NAME LIMIT_S COMMAND...: run with a timeout, log to $LOG/NAME.log, record rc
    local name="$1" limit="$2"
    shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    echo
    echo "=================== $name (limit ${limit}s): $*"
    if [ "$limit" -lt 5 ]; then
        echo "skipped: the overall deadline is reached"
        NAMES+=("$name"); CODES+=("skip"); SECS+=(0)
        return
    fi
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    NAMES+=("$name"); CODES+=("$rc"); SECS+=("$((SECONDS - t0))")
    tail -n "${TAIL_LINES:-40}" "$LOG/$name.log"
    echo "------------------- $name: exit $rc after $((SECONDS - t0)) s"
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
    [ "${CODES[-1]}" != "0" ] && TAIL_LINES=15 step build_manual 100 bash -c manual_build
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
[ -f tests/test_cpu_tokenizer.py ] && TAIL_LINES=10 step pytest_cpu 60 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cpu_tokenizer.py
step pytest_other_gpu 25 bash -c "$PY -m pytest -q -rs -p no:cacheprovider -m gpu tests --ignore=tests/test_cuda_tokenizer.py --ignore=tests/test_cpu_tokenizer.py; rc=\$?; [ \$rc -eq 5 ] && echo 'no other gpu tests' && exit 0; exit \$rc"

# 4. benchmark
TAIL_LINES=25 step bench 90 "$PY" benchmarks/bench_tokenizer_gpu.py --json "$LOG/bench_tokenizer_gpu.json"

echo
echo "=================== summary (logs in $LOG, total $SECONDS s)"
for i in "${!NAMES[@]}"; do
    printf "%-20s exit %-5s %5s s\n" "${NAMES[$i]}" "${CODES[$i]}" "${SECS[$i]}"
done
for f in pytest_cuda pytest_cpu; do [ -f "$LOG/$f.log" ] && echo "$f: $(grep -E "passed|failed|error|Fatal" "$LOG/$f.log" | tail -n 1)"; done
[ -f "$LOG/bench.log" ] && grep -E "^\| |goal|N=1 end to end|generic kernel" "$LOG/bench.log"
exit 0
