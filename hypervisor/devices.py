"""Many devices on one host: a DeviceSet holds one Hypervisor (pool, dispatcher, scheduler
state) per device and routes every call about a VM to the device the VM is placed on.

It offers the Hypervisor's API, so the daemon, the gRPC service, the vhost-user transport
and the exporter use it unchanged. The devices share one lock and one set of id counters
(core.SharedIds): buffer handles, kernel and launch ids are unique across the host, and a
VM keeps them all when it moves.

Placement (docs/scheduling.md, "Many devices"): a VM pinned with ``device = N`` goes to
device N; any other goes, at registration, to the device where its share fits and whose
free share plus free memory (each as a fraction of the device's total) is largest, the
lowest id on a tie. Free memory is the pool less the memory quotas of the VMs placed there.

Moving (``move_vm``): the VM's queued launches and any it submits meanwhile wait (taken
out of the source scheduler, never cancelled); its running launch and transfers finish;
then, under the lock, its buffers go through host memory to the target device with the
same handles, its kernels and counters go along, and its waiting launches are queued on
the target. A move the target cannot take (share, memory, backend) changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from scheduler import Ticket

from . import errors as E
from .compiling import Compiler
from .core import Hypervisor, SharedIds, _default_pool
from .executor import Executor, make_executor
from .models import ModelInfo, ModelOpen
from .types import DeviceInfo, DeviceUse, Event, VMInfo, VMStats

log = logging.getLogger("pxos.devices")

MOVE_DRAIN_TIMEOUT_S = 60.0  # longest a move waits for the VM's running launch and transfers


def make_device_executor(backend: str, device_id: int) -> Executor:
    """The executor of one device: CuPy on CUDA device ``device_id``; NumPy and wgpu make
    one executor per device (each its own dispatcher thread and pool)."""
    if backend in ("cupy", "auto"):
        from .executor.cupy_backend import cupy_unavailable_reason

        if cupy_unavailable_reason() is None:
            from .executor.cupy_backend import CupyExecutor

            return CupyExecutor(device_id)
        if backend == "cupy":
            return make_executor("cupy")  # raises ConfigError naming why
    return make_executor(backend)


def resolve_device_ids(backend: str, devices) -> list[int]:
    """[daemon] devices as a list of ids: None -> [0]; 'all' -> every CUDA device (one for
    NumPy and wgpu); a count n -> 0..n-1; a list -> itself (checked against the CUDA count)."""
    from .config import MAX_DEVICES

    cuda = None
    if backend in ("cupy", "auto"):
        from .executor.cupy_backend import cupy_unavailable_reason

        if cupy_unavailable_reason() is None:
            import cupy

            cuda = cupy.cuda.runtime.getDeviceCount()
    if devices is None:
        return [0]
    if devices == "all":
        return list(range(min(cuda, MAX_DEVICES))) if cuda else [0]
    ids = list(range(devices)) if isinstance(devices, int) else list(devices)
    if cuda is not None:
        missing = [i for i in ids if i >= cuda]
        if missing:
            raise E.ConfigError(f"[daemon] devices names CUDA device(s) {missing}, but this host has {cuda}")
    return ids


class _Dispatchers:
    """The dispatchers of every device, read as one (readiness, totals)."""

    def __init__(self, hvs: list[Hypervisor]):
        self._d = [hv.dispatcher for hv in hvs]

    def alive(self) -> bool:
        return all(d.alive() for d in self._d)

    _SUMMED = frozenset({"busy_seconds", "stall_seconds", "launches", "switches", "preemptions"})
    _JOINED = frozenset({"switch_gaps", "same_vm_gaps"})

    def __getattr__(self, name: str):
        vals = [getattr(d, name) for d in self._d]
        if name in self._SUMMED:  # counters: the host's total
            return sum(vals)
        if name in self._JOINED:  # samples: every device's
            return [x for v in vals for x in v]
        return vals[0]  # settings (time_slice_s, ...): the same on every device


_ROUTED = ("alloc", "free", "buffer_info", "write", "write_from", "vm_usage", "read_into", "read", "compile",
           "kernel_info", "free_kernel", "launch", "launch_wait", "launch_nowait", "close_model", "close_session", "reset_vm", "idle_hint",
           "stats", "vm_info", "set_quota", "set_domain")


class DeviceSet:
    """Shares several devices between VMs; the Hypervisor's API, routed by VM."""

    def __init__(self, backend: str = "numpy", device_ids: list[int] | int = 2, *,
                 device_pool_bytes: int | None = None, host_budget_bytes: int = 0, window_seconds: float = 1.0,
                 lookahead_depth: int = 8, prefetch: bool = True, clock: Callable[[], float] = time.monotonic,
                 executors: list[Executor] | None = None, time_slice_s: float | None = None,
                 compiler: Compiler | None = None, gpu_stepping: str = "auto"):
        ids = list(range(device_ids)) if isinstance(device_ids, int) else list(device_ids)
        if not ids or len(set(ids)) != len(ids):
            raise E.InvalidArgument(f"a device set needs distinct device ids, got {ids}")
        self._shared = SharedIds()
        self._lock = self._shared.lock
        self.clock = clock
        self.devices: dict[int, Hypervisor] = {}
        # One compiler (its workers, each VM's compile budget) for every device.
        self._own_compiler = compiler is None
        self.compiler = compiler if compiler is not None else Compiler()
        for n, i in enumerate(ids):
            ex = executors[n] if executors is not None else make_device_executor(backend, i)
            pool = device_pool_bytes if device_pool_bytes is not None else _default_pool(ex)
            self.devices[i] = Hypervisor(backend=ex, device_pool_bytes=pool, host_budget_bytes=host_budget_bytes,
                                         window_seconds=window_seconds, lookahead_depth=lookahead_depth,
                                         prefetch=prefetch, clock=clock, device_id=i, shared=self._shared,
                                         time_slice_s=time_slice_s, compiler=self.compiler,
                                         gpu_stepping=gpu_stepping)
        self._first = self.devices[ids[0]]
        self.executor = self._first.executor
        self.dispatcher = _Dispatchers(list(self.devices.values()))
        self._where: dict[int, int] = {}  # VM -> device id
        self._placing = threading.RLock()  # one registration or removal at a time
        self._models: dict[str, tuple] = {}  # name -> (path, dtype, ModelPlan, ModelInfo as first loaded)
        self._model_load = threading.RLock()
        self._reserved: set[tuple[int, str]] = set()  # (device, model) a move is bringing there
        self.moves: list[dict] = []  # the last moves' reports (MOVE_HISTORY)
        self.rebalancer = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DeviceSet:
        for hv in self.devices.values():
            hv.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.rebalancer is not None:
            self.rebalancer.stop()
        for hv in self.devices.values():
            hv.stop(timeout)
        if self._own_compiler:
            self.compiler.close()

    def __enter__(self) -> DeviceSet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ routing
    def device_of(self, vm_id: int) -> int:
        with self._lock:
            try:
                return self._where[vm_id]
            except KeyError:
                raise E.NotFound(f"no VM {vm_id}") from None

    def hv_of(self, vm_id: int) -> Hypervisor:
        return self.devices[self.device_of(vm_id)]

    def __getattr__(self, name: str):
        if name not in _ROUTED:
            raise AttributeError(name)

        def routed(vm_id: int, *args, **kw):
            for _ in range(8):  # a move in between: the VM answers on its new device
                dev = self.device_of(vm_id)
                try:
                    return getattr(self.devices[dev], name)(vm_id, *args, **kw)
                except E.NotFound:
                    with self._lock:
                        if self._where.get(vm_id) == dev:
                            raise
            raise E.Busy(f"VM {vm_id} keeps moving between devices; retry")

        return routed

    # ------------------------------------------------------------------ placement
    def _load(self, hv: Hypervisor) -> tuple[float, int]:
        share = sum(v.share for v in hv._vms.values())
        quotas = sum(hv.memory.vm(v).quota for v in hv._vms)
        return share, quotas

    def place(self, share: float, quota: int, device: int | None = None) -> int:
        """The device a new VM goes to (lock held): ``device`` if pinned, else the one where
        its share fits with the most free share + free memory (fractions), lowest id on a tie."""
        if device is not None:
            if device not in self.devices:
                raise E.InvalidArgument(f"no device {device}; this daemon has devices {sorted(self.devices)}")
            return device
        best, best_score = None, None
        for i, hv in self.devices.items():
            used_share, quotas = self._load(hv)
            if used_share + share > 100 + 1e-9:
                continue
            pool = hv.memory.pool_bytes
            score = (100 - used_share) / 100 + (pool - quotas) / pool
            if best_score is None or score > best_score + 1e-12:
                best, best_score = i, score
        if best is None:
            raise E.InvalidArgument(f"no device has {share:g}% of share free "
                                    f"(free: {', '.join(f'{i}: {100 - self._load(h)[0]:g}%' for i, h in self.devices.items())})")
        return best

    def register_vm(self, vm_id: int, memory_quota_mb: float, compute_quota_percent: float, *,
                    device: int | None = None, memory_quota_bytes: int | None = None, **kw) -> VMInfo:
        quota = memory_quota_bytes if memory_quota_bytes is not None else int(memory_quota_mb * 1_000_000)
        # Placement and registration as one step (the placing lock), but not under the
        # hypervisor lock: the device emits its event after letting go of that, as ever.
        with self._placing:
            with self._lock:
                if vm_id in self._where:
                    raise E.AlreadyExists(f"VM {vm_id} is already registered")
                dev = self.place(compute_quota_percent, quota, device)
            info = self.devices[dev].register_vm(vm_id, memory_quota_mb, compute_quota_percent,
                                                 memory_quota_bytes=memory_quota_bytes, **kw)
            with self._lock:
                self._where[vm_id] = dev
            return info

    def unregister_vm(self, vm_id: int) -> None:
        with self._placing:
            for _ in range(8):  # a move in between: it goes from its new device
                dev = self.device_of(vm_id)
                try:
                    self.devices[dev].unregister_vm(vm_id)  # answers its cancelled launches: not under the lock
                except E.NotFound:
                    with self._lock:
                        if self._where.get(vm_id) == dev:
                            raise
                    continue
                with self._lock:
                    self._where.pop(vm_id, None)
                break
            else:
                raise E.Busy(f"VM {vm_id} keeps moving between devices; retry")
        self._sweep_models()

    # ------------------------------------------------------------------ the host as one
    def list_vms(self) -> list[VMInfo]:
        with self._lock:
            return sorted((i for hv in self.devices.values() for i in hv.list_vms()), key=lambda i: i.vm_id)

    def all_stats(self) -> list[VMStats]:
        return sorted((s for hv in self.devices.values() for s in hv.all_stats()), key=lambda s: s.vm_id)

    @property
    def _vms(self) -> dict:
        return {k: v for hv in self.devices.values() for k, v in hv._vms.items()}

    def _emit(self, kind: str, vm_id: int | None, **detail) -> None:
        self._first._emit(kind, vm_id, **detail)

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        offs = [hv.subscribe(fn) for hv in self.devices.values()]

        def unsubscribe() -> None:
            for off in offs:
                off()

        return unsubscribe

    def device_info(self) -> DeviceInfo:
        """The devices together: pools and host budgets summed, names joined."""
        infos = [hv.device_info() for hv in self.devices.values()]
        names = sorted({i.device_name for i in infos})
        first = infos[0]
        return DeviceInfo(first.backend, f"{len(infos)} x {' / '.join(names)}", sum(i.pool_bytes for i in infos),
                          sum(i.pool_used for i in infos), sum(i.host_budget for i in infos),
                          sum(i.host_used for i in infos), first.vendor, first.api, first.time_source)

    def device_stats(self) -> list[DeviceUse]:
        return [u for hv in self.devices.values() for u in hv.device_stats()]

    def device_list(self) -> list[tuple[int, DeviceInfo, Hypervisor]]:
        return [(i, hv.device_info(), hv) for i, hv in self.devices.items()]

    @property
    def lookahead_depth(self) -> int:
        return max(hv.lookahead_depth for hv in self.devices.values())

    def lookahead(self, n: int | None = None) -> list[Ticket]:
        return [t for hv in self.devices.values() for t in hv.lookahead(n)]

    # ------------------------------------------------------------------ shared models
    def load_model(self, name: str, path: str, dtype: str = "float32") -> ModelInfo:
        """Known to every device from now on, held by none until a VM opens it: each device
        loads it when a VM placed there first opens it (or moves there with it open) and
        lets it go when no VM there has it open. Loaded once now on the first device, to
        refuse a bad file at once and fix the model's id and buffer handles, which every
        device's copy shares (a guest's handles hold wherever its VM runs); then let go."""
        with self._model_load:
            if name in self._models:
                raise E.AlreadyExists(f"a model named {name} is already loaded")
            info = self._first.load_model(name, path, dtype)
            self._models[name] = (path, dtype, self._first.models.plan(name), info)
        self._sweep_models()
        return info

    def remove_model(self, name: str) -> None:
        with self._model_load:
            if name not in self._models:
                raise E.NotFound(f"no model named {name!r}")
            holders = [hv for hv in self.devices.values() if hv.model_devices(name)]
            for hv in holders:  # in use anywhere: refused before any copy goes
                info = next(m for m in hv.list_models() if m.name == name)
                if info.opens:
                    raise E.ModelInUse(f"model {name!r} is open on device {hv.device_id} by VM(s) "
                                       f"{', '.join(map(str, info.users))}")
            for hv in holders:
                hv.remove_model(name)
            del self._models[name]

    def list_models(self) -> list[ModelInfo]:
        """Each known model once: the figures of one copy (none held: its size as loaded,
        nothing resident), users and open sessions of every device."""
        with self._model_load:
            known = {n: rec[3] for n, rec in self._models.items()}
        seen: dict[str, ModelInfo] = {}
        for hv in self.devices.values():
            for m in hv.list_models():
                if m.name in seen:
                    first = seen[m.name]
                    m = replace(first, users=tuple(sorted(set(first.users) | set(m.users))),
                                opens=first.opens + m.opens, device_bytes=first.device_bytes + m.device_bytes,
                                host_bytes=first.host_bytes + m.host_bytes)
                seen[m.name] = m
        for n, info in known.items():
            seen.setdefault(n, replace(info, device_bytes=0, host_bytes=0, users=(), opens=0))
        return [seen[n] for n in sorted(seen)]

    def model_devices(self, name: str) -> list[int]:
        """The devices that hold model ``name`` now (each holds it once)."""
        return [i for i, hv in self.devices.items() if hv.model_devices(name)]

    def _ensure_model(self, hv: Hypervisor, name: str) -> None:
        """Model ``name`` loaded on ``hv`` (``_model_load`` held; seconds when it is not)."""
        if name in self._models and not hv.model_devices(name):
            path, dtype, plan, _ = self._models[name]
            hv.load_model(name, path, dtype, plan=plan)

    def open_model(self, vm_id: int, name: str, *, session: int = 0) -> ModelOpen:
        with self._model_load:  # never beside a sweep that would let this device's copy go
            hv = self.hv_of(vm_id)
            self._ensure_model(hv, name)
            return hv.open_model(vm_id, name, session=session)

    def _sweep_models(self) -> None:
        """Let go of the models no VM on their device has open (and no move is bringing)."""
        with self._model_load:
            for i, hv in self.devices.items():
                for m in hv.list_models():
                    if not m.opens and (i, m.name) not in self._reserved:
                        try:
                            hv.remove_model(m.name)
                        except (E.ModelInUse, E.NotFound):
                            pass

    def close_model(self, vm_id: int, model_id: int, *, session: int = 0) -> None:
        self.__getattr__("close_model")(vm_id, model_id, session=session)
        self._sweep_models()

    def close_session(self, vm_id: int, session: int):
        res = self.__getattr__("close_session")(vm_id, session)
        self._sweep_models()
        return res

    def reset_vm(self, vm_id: int, why: str = "the device was reset"):
        res = self.__getattr__("reset_vm")(vm_id, why)
        self._sweep_models()
        return res

    # ------------------------------------------------------------------ moves
    def move_vm(self, vm_id: int, device: int, *, timeout: float = MOVE_DRAIN_TIMEOUT_S,
                by: str = "operator") -> dict:
        """Move a VM to ``device`` (hypervisor/moving.py). The shared models it has open are
        loaded on the target first (seconds, before the pause), held there for the move."""
        from .moving import move_vm

        src = self.hv_of(vm_id)
        if device not in self.devices:
            raise E.InvalidArgument(f"no device {device}; this daemon has devices {sorted(self.devices)}")
        with self._model_load:
            with self._lock:
                names = sorted(src.models.opens_of(vm_id))
            for name in names:
                self._reserved.add((device, name))
            try:
                for name in names:
                    self._ensure_model(self.devices[device], name)
            except BaseException:
                self._reserved.difference_update((device, n) for n in names)
                raise
        try:
            return move_vm(self, vm_id, device, timeout=timeout, by=by)
        finally:
            with self._model_load:
                self._reserved.difference_update((device, n) for n in names)
            self._sweep_models()

    def start_rebalancer(self, interval: float, dwell: float, **kw):
        """Move VMs off a busier device from now on (hypervisor/rebalance.py); off unless called."""
        from .rebalance import Rebalancer

        self.rebalancer = Rebalancer(self, interval, dwell, **kw).start()
        return self.rebalancer
