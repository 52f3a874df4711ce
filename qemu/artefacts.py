"""Guest artefacts in a cache directory: Debian's current 6.1 kernel (resolved through
`apt-cache depends linux-image-amd64`, never hard-coded) and its headers fetched with
`apt-get download` and unpacked with dpkg (nothing is installed on the host), the
uncompressed vmlinux for a fast PVH boot, pxos_gpu.ko built against those headers, the
static `pxos` tool, and a busybox initramfs holding both.

Every step records a key (package names, source hashes) and is redone only when its key
changes; a file lock keeps concurrent preparers (parallel tests) from racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from . import initramfs
from .errors import GuestImageError

REPO = Path(__file__).resolve().parent.parent
GUEST_DRIVER = REPO / "guest_driver"
MODULE_SRC = GUEST_DRIVER / "kernel"
TOOL_SRC = GUEST_DRIVER / "tools"
UAPI_HEADER = GUEST_DRIVER / "include" / "uapi" / "pxos_gpu.h"

IMAGE_META_PACKAGE = "linux-image-amd64"
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci")
XZ_MAGIC = b"\xfd7zXZ\x00"

Runner = Callable[..., subprocess.CompletedProcess]


def default_cache_dir() -> Path:
    env = os.environ.get("PXOS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pxos" / "guest"


@dataclass(frozen=True)
class KernelPackages:
    release: str          # e.g. "6.1.0-56-amd64"
    image: str
    headers: str
    headers_common: str
    kbuild: str

    @property
    def all(self) -> tuple[str, ...]:
        return (self.image, self.headers, self.headers_common, self.kbuild, "busybox-static")


@dataclass(frozen=True)
class GuestArtefacts:
    cache: Path
    release: str
    vmlinux: Path         # uncompressed ELF with the PVH note
    bzimage: Path
    headers: Path         # make -C here M=... builds modules
    module: Path          # pxos_gpu.ko
    tool: Path            # static pxos
    initramfs: Path       # gzip'd newc cpio, without a command

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def parse_depends(text: str) -> list[str]:
    """Package names on the `Depends:` lines of `apt-cache depends` output."""
    return [m.group(1) for m in re.finditer(r"^\s*\|?Depends:\s*<?([A-Za-z0-9.+:-]+)>?", text, re.M)]


def resolve_kernel_packages(run: Runner = subprocess.run) -> KernelPackages:
    """linux-image-amd64 → linux-image-<release> → its headers, -common and kbuild."""
    image = _first(_apt_depends(IMAGE_META_PACKAGE, run), r"linux-image-(\d.*)$", IMAGE_META_PACKAGE)
    release = image.removeprefix("linux-image-").removesuffix("-unsigned")
    headers = f"linux-headers-{release}"
    deps = _apt_depends(headers, run)
    common = _first(deps, r"linux-headers-.*-common(-rt)?$", headers)
    kbuild = _first(deps, r"linux-kbuild-.*$", headers)
    return KernelPackages(release, image, headers, common, kbuild)


def _apt_depends(package: str, run: Runner) -> list[str]:
    proc = run(["apt-cache", "depends", package], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestImageError(f"apt-cache depends {package} failed: {proc.stderr.strip()} "
                              "(run `apt-get update` once)")
    return parse_depends(proc.stdout)


def _first(names: list[str], pattern: str, what: str) -> str:
    for name in names:
        if re.match(pattern, name):
            return name
    raise GuestImageError(f"apt-cache depends {what}: no dependency matching {pattern!r} in {names} "
                          "(is the package list current? `apt-get update`)")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage whose payload is XZ (Debian's CONFIG_KERNEL_XZ)."""
    start = bzimage.find(XZ_MAGIC)
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            return elf
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise GuestImageError("extract vmlinux: no XZ payload holding an ELF kernel in the bzImage")


def _tree_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in (root.rglob("*") if root.is_dir() else [root])
                       if p.is_file() and p.suffix in {".c", ".h", ""} | {".conf"}
                       and not p.name.startswith(".") and "Module.symvers" not in p.name)
        for p in files:
            h.update(str(p.relative_to(root.parent)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class _Cache:
    """Step keys in <cache>/state.json."""

    def __init__(self, root: Path):
        self.root = root
        self.state_path = root / "state.json"
        self.state: dict[str, str] = {}
        if self.state_path.exists():
            try:
                self.state = json.loads(self.state_path.read_text())
            except ValueError:
                self.state = {}

    def done(self, step: str, key: str, *outputs: Path) -> bool:
        return self.state.get(step) == key and all(p.exists() for p in outputs)

    def mark(self, step: str, key: str) -> None:
        self.state[step] = key
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.state_path)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _run(step: str, argv: list[str], run: Runner = subprocess.run, **kw) -> subprocess.CompletedProcess:
    try:
        proc = run(argv, capture_output=True, text=True, **kw)
    except OSError as e:
        raise GuestImageError(f"{step}: cannot run {argv[0]}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise GuestImageError(f"{step}: `{' '.join(argv)}` exited {proc.returncode}:\n{tail}")
    return proc


def _deb(debs: Path, package: str) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise GuestImageError(f"download: {package}_*.deb not in {debs}")
    return found[-1]


def prepare(cache: Path | None = None, *, log: Callable[[str], None] = lambda s: None,
            run: Runner = subprocess.run) -> GuestArtefacts:
    """Make sure every artefact is in the cache and current; return where they are."""
    root = (cache or default_cache_dir()).resolve()
    with _locked(root):
        return _prepare(root, log, run)


def _prepare(root: Path, log: Callable[[str], None], run: Runner) -> GuestArtefacts:
    state = _Cache(root)
    pk = resolve_kernel_packages(run)
    rel = pk.release
    debs, sysroot, build = root / "debs", root / "sysroot" / rel, root / "build" / rel
    headers = sysroot / "usr" / "src" / f"linux-headers-{rel}"
    bzimage = sysroot / "boot" / f"vmlinuz-{rel}"
    vmlinux = root / f"vmlinux-{rel}"
    modsrc = sysroot / "lib" / "modules" / rel / "kernel" / "drivers" / "virtio"
    busybox = sysroot / "bin" / "busybox"

    key = ",".join(pk.all)
    if not state.done("download", key, *(debs / "ok",)) or not all(
            list(debs.glob(f"{p}_*.deb")) for p in pk.all):
        log(f"download: apt-get download {' '.join(pk.all)}")
        debs.mkdir(parents=True, exist_ok=True)
        _run("download", ["apt-get", "download", *pk.all], run, cwd=debs)
        (debs / "ok").write_text(key)
        state.mark("download", key)

    modroot = sysroot / "lib" / "modules" / rel / "kernel"
    hostfs_mods = {"netfs": modroot / "fs/netfs/netfs.ko", "fscache": modroot / "fs/fscache/fscache.ko",
                   "9pnet": modroot / "net/9p/9pnet.ko", "9pnet_virtio": modroot / "net/9p/9pnet_virtio.ko",
                   "9p": modroot / "fs/9p/9p.ko"}
    if not state.done("unpack", key, headers / "Makefile", bzimage, busybox, modsrc / "virtio.ko",
                      *hostfs_mods.values()):
        log(f"unpack: headers, kernel and busybox into {sysroot}")
        shutil.rmtree(sysroot, ignore_errors=True)
        sysroot.mkdir(parents=True)
        for p in (pk.headers, pk.headers_common, pk.kbuild, "busybox-static"):
            _run("unpack", ["dpkg", "-x", str(_deb(debs, p)), str(sysroot)], run)
        # Only boot/ and the virtio modules of the ~490 MB image package.
        _run("unpack", ["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards '
                        '"./boot/vmlinuz-*" "./lib/modules/*/kernel/drivers/virtio/*" '
                        '"./lib/modules/*/kernel/fs/9p/*" "./lib/modules/*/kernel/net/9p/9pnet.ko" '
                        '"./lib/modules/*/kernel/net/9p/9pnet_virtio.ko" "./lib/modules/*/kernel/fs/netfs/*" '
                        '"./lib/modules/*/kernel/fs/fscache/*"', "sh",
                        str(_deb(debs, pk.image)), str(sysroot)], run)
        # The arch headers include the -common tree by an absolute /usr/src path.
        mk = headers / "Makefile"
        mk.write_text(re.sub(r"^include /usr/src/", f"include {sysroot}/usr/src/", mk.read_text(), flags=re.M))
        state.mark("unpack", key)

    # virtio-net for networked guests (pxos-vm --net): its own step, so that a cache unpacked
    # before it existed gains the three modules without unpacking everything again.
    net_mods = {"failover": modroot / "net/core/failover.ko", "net_failover": modroot / "drivers/net/net_failover.ko",
                "virtio_net": modroot / "drivers/net/virtio_net.ko"}
    if not state.done("netmods", key, *net_mods.values()):
        log("unpack: the virtio-net modules")
        _run("unpack", ["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards '
                        '"./lib/modules/*/kernel/net/core/failover.ko" '
                        '"./lib/modules/*/kernel/drivers/net/net_failover.ko" '
                        '"./lib/modules/*/kernel/drivers/net/virtio_net.ko"', "sh",
                        str(_deb(debs, pk.image)), str(sysroot)], run)
        state.mark("netmods", key)

    # The stock DRM driver and what it needs (the DRM transport, `pxos-vm --driver stock`):
    # its own step too, for caches unpacked before it existed.
    drm_mods = {"drm": modroot / "drivers/gpu/drm/drm.ko",
                "drm_kms_helper": modroot / "drivers/gpu/drm/drm_kms_helper.ko",
                "drm_shmem_helper": modroot / "drivers/gpu/drm/drm_shmem_helper.ko",
                "virtio_dma_buf": modsrc / "virtio_dma_buf.ko",
                "virtio_gpu": modroot / "drivers/gpu/drm/virtio/virtio-gpu.ko"}
    if not state.done("drmmods", key, *drm_mods.values()):
        log("unpack: the stock virtio-gpu DRM driver's modules")
        _run("unpack", ["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards '
                        '"./lib/modules/*/kernel/drivers/gpu/drm/drm.ko" '
                        '"./lib/modules/*/kernel/drivers/gpu/drm/drm_kms_helper.ko" '
                        '"./lib/modules/*/kernel/drivers/gpu/drm/drm_shmem_helper.ko" '
                        '"./lib/modules/*/kernel/drivers/gpu/drm/virtio/virtio-gpu.ko"', "sh",
                        str(_deb(debs, pk.image)), str(sysroot)], run)
        state.mark("drmmods", key)

    if not state.done("vmlinux", key, vmlinux):
        log("vmlinux: extracting the uncompressed kernel (PVH boot)")
        tmp = vmlinux.with_suffix(".tmp")
        tmp.write_bytes(extract_vmlinux(bzimage.read_bytes()))
        tmp.replace(vmlinux)
        state.mark("vmlinux", key)

    module = build / "module" / "pxos_gpu.ko"
    mkey = f"{key}:{_tree_hash(MODULE_SRC, UAPI_HEADER)}"
    if not state.done("module", mkey, module):
        log(f"module: make -C {headers} M=... modules")
        mdir = build / "module"
        shutil.rmtree(mdir, ignore_errors=True)
        _run("module", ["make", "-C", str(MODULE_SRC), "dkms-tree", f"DEST={mdir}"], run)
        _run("module", ["make", "-C", str(headers), f"M={mdir}", "modules"], run)
        state.mark("module", mkey)

    tool = build / "tools" / "pxos"
    tkey = _tree_hash(TOOL_SRC, UAPI_HEADER)
    if not state.done("tool", tkey, tool):
        log("tool: building the static pxos tool")
        _run("tool", ["make", "-C", str(TOOL_SRC), f"OUT={tool.parent}"], run)
        state.mark("tool", tkey)

    ikey = f"{mkey}:{tkey}:{hashlib.sha256(initramfs.INIT_SCRIPT.encode()).hexdigest()[:12]}"
    # Named by its key: checkouts with different /init scripts sharing one cache each keep
    # their own image (none rebuilds another's under a guest about to boot it).
    initrd = root / f"initramfs-{rel}-{hashlib.sha256(ikey.encode()).hexdigest()[:12]}.cpio.gz"
    if not initrd.exists():
        log(f"initramfs: busybox, modules and pxos into {initrd.name}")
        mods = {m: modsrc / f"{m}.ko" for m in VIRTIO_MODULES}
        mods["pxos_gpu"] = module
        mods.update(hostfs_mods)
        mods.update(net_mods)
        mods.update(drm_mods)
        initramfs.write_archive(initrd, initramfs.base_entries(busybox, tool, mods))
        state.mark("initramfs", ikey)

    return GuestArtefacts(cache=root, release=rel, vmlinux=vmlinux, bzimage=bzimage,
                          headers=headers, module=module, tool=tool, initramfs=initrd)
