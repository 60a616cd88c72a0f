#!/usr/bin/env bash
# The Jetson's CPU side, checked off-device: cross-build the C++ extension for aarch64 and run the
# runtime under user-mode emulation (qemu-aarch64), within 20 minutes on a 2-core x86-64 machine.
#
#   bash benchmarks/aarch64_check.sh           # from anywhere; caches in .aarch64-cache/ (git-ignored)
#
# Steps (each prints one PASS/FAIL line in the summary; the exit code is non-zero if any failed):
#   tools           qemu-aarch64(-static), aarch64-linux-gnu-g++, mmdebstrap, the host venv (torch)
#   rootfs          Debian bookworm arm64 (python3.11, its headers, libgomp1), mmdebstrap --variant=extract
#   wheels          the aarch64 wheels of numpy, onnxruntime, opencv-python-headless, tokenizers, tqdm,
#                   pytest for cp311, installed by the host's pip into a --target folder
#   cross-build     vbedge._kernels with aarch64-linux-gnu-g++, setup.py's own flags and sources,
#                   against the rootfs' Python headers
#   import          under emulation: tests/test_package.py (`import vbedge` loads nothing heavy, the
#                   CLI starts), torch not even installed, the extension loads and picked "neon"
#   tokenizer-neon  tests/test_cpu_tokenizer.py + tests/test_cpu_tokenizer_neon.py: NEON ids equal
#                   the NumPy reference (ties included)
#   tokenizer-portable   the same files with VBEDGE_CPU_SIMD=portable
#   inputs          on the host: the small test bundle (tests/bundle_factory.py) + a 32-frame video
#   caption         under emulation: `vbedge caption` with ONNX Runtime on the CPU; its events must
#                   equal the host's run of the same command (captions, leaves, tokens exactly,
#                   scores within 1e-3)
#
# Why this shape:
# - No binfmt_misc registration: that is a kernel-wide setting on a shared machine. Python runs as
#   `qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.11` through a small wrapper script whose
#   path becomes sys.executable, so subprocesses that tests start re-enter the emulator.
# - --variant=extract: maintainer scripts would need binfmt; an interpreter, its stdlib and shared
#   libraries need none. The wheels are installed by the host's pip with aarch64 platform tags
#   (the same files pip would unpack on the board), not by an emulated pip.
# - ROOTFS/proc/cpuinfo is written with Cortex-A78AE (Orin) entries: qemu 7.2 passes the host's x86
#   /proc/cpuinfo through, and the cpuinfo library inside ONNX Runtime crashes on it (SIGSEGV at
#   import). The emulated CPU is cortex-a76 (ARMv8.2 + dotprod + fp16, no SVE, like the A78AE).
# - Debian bookworm has Python 3.11; JetPack 6 has 3.10 (JetPack 5: 3.8). The extension and the
#   wheels are cp311 here; tests/test_python_compat.py checks the source against requires-python.
# - Speed under emulation means nothing (S3D runs ~100x slower than natively): correctness only.
#
# Environment: VBEDGE_AARCH64_CACHE (cache folder), VBEDGE_HOST_PYTHON (x86 venv python with torch,
# default .venv/bin/python), VBEDGE_DEBIAN_MIRROR, VBEDGE_QEMU_CPU (default cortex-a76),
# AARCH64_CHECK_BUDGET_S (overall deadline, default 1200).
set +e
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${VBEDGE_AARCH64_CACHE:-$ROOT/.aarch64-cache}"
SUITE=bookworm
MIRROR="${VBEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$CACHE/rootfs-$SUITE-arm64"
PYVER=3.11
# The versions this check last passed with (the same as the x86 dev venv). JetPack 6 (Python 3.10)
# needs numpy < 2.3 (numpy 2.3+ requires Python 3.11); see docs/jetson.md.
PINS="numpy==2.4.6 onnxruntime==1.32.0 opencv-python-headless==5.0.0.93 tokenizers==0.23.3 tqdm==4.70.1 pytest==9.2.0"
PLATFORMS="--platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64"
SITE="$CACHE/site-cp311-aarch64"
STAGE="$CACHE/stage"
RUN="$CACHE/run"
LOG="$CACHE/logs"
WRAP="$CACHE/bin/python3"
HOST_PY="${VBEDGE_HOST_PYTHON:-$ROOT/.venv/bin/python}"
QEMU_CPU_MODEL="${VBEDGE_QEMU_CPU:-cortex-a76}"
DEADLINE=$((SECONDS + ${AARCH64_CHECK_BUDGET_S:-1200}))
mkdir -p "$CACHE" "$LOG" "$RUN" "$CACHE/bin"
declare -a NAMES RESULTS SECS NOTES
declare -A OK

step() {  # step NAME LIMIT_S NEEDS COMMAND...: run if NEEDS passed, with a timeout; log to $LOG/NAME.log
    local name="$1" limit="$2" needs="$3"
    shift 3
    local need
    for need in $needs; do
        if [ "${OK[$need]:-0}" != 1 ]; then
            NAMES+=("$name"); RESULTS+=("FAIL"); SECS+=(0); NOTES+=("not run: step '$need' failed")
            echo "---- $name: not run (needs $need)"
            return
        fi
    done
    local left=$((DEADLINE - SECONDS))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        NAMES+=("$name"); RESULTS+=("FAIL"); SECS+=(0); NOTES+=("not run: overall deadline reached")
        return
    fi
    echo "---- $name (limit ${limit}s)"
    local t0=$SECONDS
    # Steps are shell functions: exported (below) so that `timeout` can run them in a child bash.
    timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    local dt=$((SECONDS - t0))
    local note
    note="$(grep -E '^NOTE: ' "$LOG/$name.log" | tail -1 | sed 's/^NOTE: //')"
    if [ $rc -eq 0 ]; then
        OK[$name]=1; NAMES+=("$name"); RESULTS+=("PASS")
    else
        [ $rc -eq 124 ] && note="timed out after ${limit}s; $note"
        NAMES+=("$name"); RESULTS+=("FAIL"); note="rc=$rc, log $LOG/$name.log; $note"
        tail -15 "$LOG/$name.log" | sed 's/^/    | /'
    fi
    SECS+=("$dt"); NOTES+=("$note")
}

# ------------------------------------------------------------------------------------------------
do_tools() {
    local missing=""
    [ -n "$QEMU" ] || missing="$missing qemu-user-static"
    command -v aarch64-linux-gnu-g++ > /dev/null || missing="$missing g++-aarch64-linux-gnu"
    command -v mmdebstrap > /dev/null || missing="$missing mmdebstrap"
    if [ -n "$missing" ]; then
        echo "missing Debian packages:$missing (apt-get install$missing)"
        return 1
    fi
    "$HOST_PY" -c "import torch, numpy, cv2, pybind11, pip" || { echo "host python $HOST_PY lacks torch/cv2/pybind11"; return 1; }
    echo "NOTE: $("$QEMU" --version | head -1); $(aarch64-linux-gnu-g++ --version | head -1)"
}

do_rootfs() {
    if [ ! -f "$ROOTFS/.vbedge-complete" ]; then
        rm -rf "$ROOTFS"
        nice mmdebstrap --variant=extract --arch=arm64 \
            --include="python$PYVER,libpython$PYVER-dev,libgomp1,libstdc++6,ca-certificates" \
            "$SUITE" "$ROOTFS" "$MIRROR" || return 1
        touch "$ROOTFS/.vbedge-complete"
    fi
    # Orin's cores as the guest's /proc/cpuinfo (see the header), one entry per host core.
    mkdir -p "$ROOTFS/proc"
    local i
    : > "$ROOTFS/proc/cpuinfo"
    for i in $(seq 0 $(($(nproc) - 1))); do
        printf 'processor\t: %d\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n' "$i" >> "$ROOTFS/proc/cpuinfo"
    done
    cat > "$WRAP" <<EOF
#!/bin/sh
# aarch64 Python under user-mode emulation; this script's path is the guest's sys.executable.
exec "$QEMU" -cpu "$QEMU_CPU_MODEL" -L "$ROOTFS" -0 "\$0" "$ROOTFS/usr/bin/python$PYVER" "\$@"
EOF
    chmod +x "$WRAP"
    "$WRAP" -c "import platform, sys; assert platform.machine() == 'aarch64', platform.machine(); print('NOTE: Debian $SUITE arm64, Python', sys.version.split()[0])"
}

do_wheels() {
    local key
    key="$(echo "$PINS $PLATFORMS" | sha256sum | cut -c1-16)"
    if [ ! -f "$SITE/.vbedge-$key" ]; then
        rm -rf "$SITE"
        nice "$HOST_PY" -m pip download -q -d "$CACHE/wheels" $PLATFORMS --python-version "$PYVER" \
            --implementation cp --only-binary=:all: $PINS || return 1
        nice "$HOST_PY" -m pip install -q --no-index --find-links "$CACHE/wheels" --target "$SITE" $PLATFORMS \
            --python-version "$PYVER" --implementation cp --only-binary=:all: $PINS || return 1
        touch "$SITE/.vbedge-$key"
    fi
    echo "NOTE: $PINS"
}

do_cross_build() {
    local flags sources pyinc pb key out
    flags="$("$HOST_PY" "$ROOT/benchmarks/aarch64_support.py" cxxflags)" || return 1
    sources="$("$HOST_PY" "$ROOT/benchmarks/aarch64_support.py" sources)" || return 1
    pb="$("$HOST_PY" -c 'import pybind11; print(pybind11.get_include())')" || return 1
    pyinc="$ROOTFS/usr/include/python$PYVER"
    [ -f "$pyinc/Python.h" ] || { echo "no $pyinc/Python.h in the rootfs"; return 1; }
    key="$( (cd "$ROOT" && cat $sources kernels/include/vbedge/*.h; echo "$flags"; aarch64-linux-gnu-g++ --version; cat "$pb/pybind11/detail/common.h") | sha256sum | cut -c1-16)"
    out="$CACHE/build/$key/_kernels.cpython-${PYVER/./}-aarch64-linux-gnu.so"
    if [ ! -f "$out" ]; then
        mkdir -p "$(dirname "$out")"
        # -idirafter: the rootfs' multiarch pyconfig.h (aarch64-linux-gnu/python3.11/pyconfig.h)
        # without letting its glibc headers shadow the cross toolchain's.
        (cd "$ROOT" && echo aarch64-linux-gnu-g++ $flags -fPIC -shared -Ikernels/include -I"$pb" -I"$pyinc" \
            -idirafter "$ROOTFS/usr/include" $sources -o "$out.tmp" &&
            nice aarch64-linux-gnu-g++ $flags -fPIC -shared -Ikernels/include -I"$pb" -I"$pyinc" \
            -idirafter "$ROOTFS/usr/include" $sources -o "$out.tmp") || return 1
        mv "$out.tmp" "$out"
    fi
    file "$out" | grep -q "ARM aarch64" || { file "$out"; return 1; }
    "$HOST_PY" "$ROOT/benchmarks/aarch64_support.py" stage "$STAGE" || return 1
    cp "$out" "$STAGE/vbedge/"
    echo "NOTE: $flags -> $(basename "$out") ($(du -k "$out" | cut -f1) KiB)"
}

in_emulator() {  # in_emulator ARGS...: the aarch64 Python, cwd = the staged package
    (cd "$STAGE" && PYTHONPATH="$STAGE:$SITE" PYTHONDONTWRITEBYTECODE=1 nice "$WRAP" "$@")
}

do_import() {
    in_emulator - <<'EOF' || return 1
import importlib.util, platform, sys
assert platform.machine() == "aarch64", platform.machine()
assert importlib.util.find_spec("torch") is None, "torch is installed in the aarch64 env: the check would prove nothing"
import vbedge
from vbedge import _kernels
heavy = [m for m in ("torch", "tensorrt", "pycuda", "cupy", "onnx", "transformers") if m in sys.modules]
assert not heavy, heavy
assert _kernels.simd_path() == "neon", _kernels.simd_path()
print("NOTE: import vbedge OK without torch; vbedge._kernels", _kernels.version(), "SIMD path", _kernels.simd_path())
EOF
    in_emulator -m pytest -q -p no:cacheprovider tests/test_package.py
}

do_tokenizer() {  # do_tokenizer neon|portable
    local env=()
    [ "$1" = portable ] && env=(env VBEDGE_CPU_SIMD=portable)
    (cd "$STAGE" && PYTHONPATH="$STAGE:$SITE" PYTHONDONTWRITEBYTECODE=1 "${env[@]}" nice "$WRAP" -m pytest -q -rs \
        -p no:cacheprovider tests/test_cpu_tokenizer.py tests/test_cpu_tokenizer_neon.py) > "$LOG/tokenizer-$1.pytest" 2>&1
    local rc=$?
    cat "$LOG/tokenizer-$1.pytest"
    echo "NOTE: $(grep -E '[0-9]+ (passed|failed)' "$LOG/tokenizer-$1.pytest" | tail -1 | tr -d '=' | sed 's/^ *//')"
    return $rc
}

do_inputs() {
    (cd "$ROOT" && nice "$HOST_PY" benchmarks/aarch64_support.py inputs "$RUN") || return 1
    echo "NOTE: bundle $RUN/bundle, video $RUN/clip.avi (32 synthetic frames)"
}

do_caption() {
    local args=(caption "$RUN/clip.avi" --bundle "$RUN/bundle" --backend onnxruntime --template caption --stable 1)
    rm -f "$RUN/host.jsonl" "$RUN/arm.jsonl"
    (cd "$RUN" && nice "$HOST_PY" -m vbedge.cli "${args[@]}" --jsonl "$RUN/host.jsonl") || return 1
    in_emulator -m vbedge.cli "${args[@]}" --jsonl "$RUN/arm.jsonl" || return 1
    "$HOST_PY" "$ROOT/benchmarks/aarch64_support.py" compare "$RUN/host.jsonl" "$RUN/arm.jsonl" || return 1
    echo "NOTE: $(wc -l < "$RUN/arm.jsonl") caption events equal to the x86-64 run"
}

# ------------------------------------------------------------------------------------------------
echo "aarch64 check of $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)), cache $CACHE"
"$HOST_PY" -c "from vbedge.info import machine_summary; print('host:', machine_summary())" 2>/dev/null
QEMU="$(command -v qemu-aarch64-static || command -v qemu-aarch64)"
export ROOT CACHE SUITE MIRROR ROOTFS PYVER PINS PLATFORMS SITE STAGE RUN LOG WRAP HOST_PY QEMU_CPU_MODEL QEMU
export -f do_tools do_rootfs do_wheels do_cross_build in_emulator do_import do_tokenizer do_inputs do_caption
step tools 30 "" do_tools
step rootfs 300 "tools" do_rootfs
step wheels 300 "tools" do_wheels
step cross-build 300 "rootfs" do_cross_build
step import 240 "rootfs wheels cross-build" do_import
step tokenizer-neon 360 "import" do_tokenizer neon
step tokenizer-portable 360 "import" do_tokenizer portable
step inputs 300 "tools" do_inputs
step caption 600 "import inputs" do_caption

echo
echo "==================== aarch64 check summary (emulated: correctness only, no speed)"
FAILED=0
for i in "${!NAMES[@]}"; do
    printf '%-4s %-19s %4ss  %s\n' "${RESULTS[$i]}" "${NAMES[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    [ "${RESULTS[$i]}" = PASS ] || FAILED=$((FAILED + 1))
done
echo "total ${SECONDS}s; logs in $LOG"
if [ $FAILED -gt 0 ]; then
    echo "aarch64 check: $FAILED step(s) FAILED"
    exit 1
fi
echo "aarch64 check: all ${#NAMES[@]} steps passed"
