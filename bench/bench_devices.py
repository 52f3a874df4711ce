"""Many devices (issue 16): the pause of moving a VM between devices against its resident
bytes (MB/s, against a host memcpy of the same bytes in the same run), and the aggregate
launch throughput of N VMs placed on N devices against the same N VMs on one device.
``python -m bench.bench_devices [--json] [--quick] [--backend numpy|cupy|wgpu] [--devices N]``

On NumPy each device is its own executor and dispatcher thread on the host's cores, so
the aggregate figure is bounded by the core count (recorded with the machine); on a host
with several GPUs (``--backend cupy``) it is the real thing. Move rates are the VM's bytes
over the whole pause, against a host memcpy of as many bytes measured just before."""

from __future__ import annotations

import statistics
import time

import numpy as np

from bench.common import Report, parser
from hypervisor.devices import DeviceSet, resolve_device_ids
from tests.support.programs import heavy

MB = 1_000_000
MIB = 1 << 20


def memcpy_mb_s(nbytes: int, repeat: int) -> float:
    """Host memcpy bandwidth (read + write of ``nbytes``), the best of ``repeat``."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / MB / best


def move_pauses(backend: str, ids: list[int], sizes_mb: list[int], repeat: int, report: Report) -> None:
    pool = (max(sizes_mb) + 64) * MIB
    with DeviceSet(backend, ids[:2], device_pool_bytes=pool) as ds:
        ds.register_vm(1, 0, 50, memory_quota_bytes=pool, device=ids[0])
        where = [ids[0], ids[1]]
        pauses = []
        for _ in range(repeat):  # a VM with no buffers: the fixed cost of a move
            pauses.append(ds.move_vm(1, where[1])["pause_seconds"])
            where.reverse()
        report.add("move_pause_empty", statistics.median(pauses) * 1e3, "ms")
        handles = []
        held = 0
        for size in sizes_mb:
            n = size * MB
            while held < n:  # buffers of at most 16 MB, as a guest holds them
                chunk = min(16 * MB, n - held)
                b = ds.alloc(1, "float32", (chunk // 4,))
                ds.write(1, b.handle, 0, np.full(chunk // 4, 1.5, np.float32).tobytes())
                handles.append(b.handle)
                held += chunk // 4 * 4
            report.add(f"host_memcpy_{size}MB", memcpy_mb_s(held, repeat), "MB/s")
            pauses, rates = [], []
            for _ in range(repeat):
                r = ds.move_vm(1, where[1])
                where.reverse()
                pauses.append(r["pause_seconds"])
                rates.append(r["bytes"] / MB / r["pause_seconds"])
            report.add(f"move_pause_{size}MB", statistics.median(pauses) * 1e3, "ms", baseline="move_pause_empty")
            report.add(f"move_rate_{size}MB", statistics.median(rates), "MB/s", baseline=f"host_memcpy_{size}MB")
        last = np.frombuffer(ds.read(1, handles[-1]), np.float32)
        assert np.all(last == 1.5), "a moved buffer changed"


def throughput(backend: str, ids: list[int], n_vms: int, launches: int, size: int, spread: bool) -> float:
    """Launches per second of ``n_vms`` VMs, each running ``launches`` heavy launches, on
    one device each (spread) or all on the first device."""
    use = ids[:n_vms] if spread else ids[:1]
    with DeviceSet(backend, use, device_pool_bytes=256 * MIB) as ds:
        work = []
        for vm in range(1, n_vms + 1):
            dev = use[(vm - 1) % len(use)]
            ds.register_vm(vm, 0, 100 / (1 if spread else n_vms), memory_quota_bytes=64 * MIB, device=dev)
            k = ds.compile(vm, heavy(4))[0]
            a, c = ds.alloc(vm, "float32", (size, size)), ds.alloc(vm, "float32", (size, size))
            ds.write(vm, a.handle, 0, (np.eye(size, dtype=np.float32) * 0.5).tobytes())
            work.append((vm, k.kernel_id, {"a": a.handle, "c": c.handle}))
        for vm, k, binds in work:  # warm each dispatcher once
            assert ds.launch(vm, k, binds).wait(60).ok
        t0 = time.perf_counter()
        comps = [ds.launch(vm, k, binds) for _ in range(launches) for vm, k, binds in work]
        assert all(c.wait(600).ok for c in comps)
        return len(comps) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "wgpu"])
    p.add_argument("--devices", default=None, help="'all', a count, or ids like 0,1 (default: 2 for NumPy/wgpu, "
                                                   "all for cupy)")
    p.add_argument("--sizes", help="comma-separated resident MB to move (default 1,16,64[,256])")
    p.add_argument("--launches", type=int, help="launches per VM in the throughput runs")
    p.add_argument("--size", type=int, help="matrix side of the throughput runs' kernel")
    args = p.parse_args(argv)
    spec = args.devices
    if spec is None:
        spec = "all" if args.backend == "cupy" else "2"
    devices = "all" if spec == "all" else (int(spec) if spec.isdigit() else [int(x) for x in spec.split(",")])
    ids = resolve_device_ids(args.backend, devices)
    report = Report("devices")
    report.notes.append(f"backend {args.backend}, devices {ids}")
    sizes = [1, 16, 64] if args.quick else [1, 16, 64, 256]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    repeat = 3 if args.quick else 7
    if len(ids) >= 2:
        move_pauses(args.backend, ids, sizes, repeat, report)
    else:
        report.notes.append("one device: no move figures (a move needs two)")
    launches, size = (6, 320) if args.quick else (12, 384)
    launches, size = args.launches or launches, args.size or size
    rounds = 2 if args.quick else 3
    counts = sorted({1, min(2, len(ids)), len(ids)})
    best: dict[str, float] = {}
    for _ in range(rounds):  # the configurations take turns; each keeps its best round
        for n in counts:
            for spread in (False, True) if n > 1 else (False,):
                key = f"aggregate_{n}vm_{n}_devices" if spread else f"aggregate_{n}vm_one_device"
                best[key] = max(best.get(key, 0.0), throughput(args.backend, ids, n, launches, size, spread))
    for n in counts:
        report.add(f"aggregate_{n}vm_one_device", best[f"aggregate_{n}vm_one_device"], "launch/s")
        if n > 1:
            spread = best[f"aggregate_{n}vm_{n}_devices"]
            report.add(f"aggregate_{n}vm_{n}_devices", spread, "launch/s", baseline=f"aggregate_{n}vm_one_device")
            report.add(f"scaling_{n}_devices", spread / best["aggregate_1vm_one_device"], "x",
                       goal=f"near {n} (x of one VM alone on one device)")
    report.emit(args.json)


if __name__ == "__main__":
    main()
