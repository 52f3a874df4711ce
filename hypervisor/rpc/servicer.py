"""The pxos.v1.Hypervisor service: each RPC turned into one call on the Daemon/Hypervisor.

VM lifecycle goes through the daemon (it owns the vhost-user sockets); everything else
calls ``daemon.hv`` directly. Errors leave through ``status.abort`` only, so every failed
call has a gRPC code from the one table and an ErrorDetail. Buffers and kernels made here
belong to RPC_SESSION, a session no guest can name.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from pydantic import ValidationError

from primitive_lang.ast import DType

from .. import errors as E
from ..config import VMConfig
from ..types import Scalar
from . import convert, limits
from . import pxos_pb2 as pb
from . import pxos_pb2_grpc as pb_grpc
from .events import EventQueue
from .status import WaitTimeout, abort

log = logging.getLogger("pxos.rpc")

#: The session of buffers and kernels made over gRPC. Guest sessions are the u32 ctx_id of
#: the virtio-gpu header, so this value (just past the u32 range) can never collide.
RPC_SESSION = 1 << 32

# How often a blocked Launch or WatchEvents checks that its client is still there.
_POLL_SECONDS = 0.25


def _rpc(method):
    """Run a unary handler; turn host errors into gRPC status (bugs into INTERNAL, logged)."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except E.PxosError as exc:
            err = exc
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            err = E.InvalidArgument(problems)
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            err = E.PxosError(f"internal error in {method.__name__}: {type(exc).__name__}: {exc}")
        abort(context, err)

    return wrapper


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round((len(values) - 1) * p / 100)))]


class HypervisorServicer(pb_grpc.HypervisorServicer):
    def __init__(self, daemon):
        self.daemon = daemon
        self.hv = daemon.hv
        self._watchers: set[EventQueue] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def close(self) -> None:
        """End every event stream and blocked launch wait (the server is stopping)."""
        self._closing.set()
        with self._lock:
            for q in self._watchers:
                q.close()

    def _transport(self) -> dict[int, dict]:
        try:
            return self.daemon.transport_status() or {}
        except Exception:  # a transport that cannot report must not fail Stats
            log.exception("transport_status failed")
            return {}

    # ---------------------------------------------------------------- VMs
    @_rpc
    def RegisterVM(self, request, context):
        vm = VMConfig(id=request.vm_id, name=request.name or None, memory=request.memory_bytes,
                      share=request.share, cap=request.cap if request.HasField("cap") else None,
                      default_class=request.default_class.upper() or None, socket=request.socket or None,
                      device=request.device if request.HasField("device") else None,
                      domain=request.domain or None)
        return convert.vm_info(self.daemon.add_vm(vm))

    @_rpc
    def UnregisterVM(self, request, context):
        self.daemon.remove_vm(request.vm_id)
        return pb.Empty()

    @_rpc
    def ListVMs(self, request, context):
        return pb.ListVMsResponse(vms=[convert.vm_info(i) for i in self.hv.list_vms()])

    @_rpc
    def GetVM(self, request, context):
        info = self.hv.vm_info(request.vm_id)
        stats = self.hv.stats(request.vm_id)
        return pb.GetVMResponse(info=convert.vm_info(info),
                                stats=convert.vm_stats(stats, self._transport().get(request.vm_id)))

    @_rpc
    def SetQuota(self, request, context):
        kw = {}
        if request.HasField("memory_bytes"):
            kw["memory_bytes"] = request.memory_bytes
        if request.HasField("share"):
            kw["share_pct"] = request.share
        change = request.WhichOneof("cap_change")
        if change == "cap":
            kw["cap_pct"] = request.cap
        elif change == "remove_cap":
            if not request.remove_cap:
                raise E.InvalidArgument("remove_cap must be true when given")
            kw["cap_pct"] = None
        if not kw:
            raise E.InvalidArgument("SetQuota changes nothing: give memory_bytes, share, cap or remove_cap")
        if request.evict:
            if "memory_bytes" not in kw:
                raise E.InvalidArgument("evict goes with memory_bytes: it is about a memory quota cut")
            kw["evict"] = True
        return convert.vm_info(self.daemon.set_quota(request.vm_id, **kw))

    @_rpc
    def MoveVM(self, request, context):
        r = self.daemon.move_vm(request.vm_id, request.device)
        return pb.MoveVMResponse(info=convert.vm_info(self.hv.vm_info(request.vm_id)), from_device=r["from_device"],
                                 pause_seconds=r["pause_seconds"], bytes=r["bytes"], buffers=r["buffers"],
                                 launches_waited=r["launches_waited"], mb_per_s=r["mb_per_s"],
                                 peer_bytes=r.get("peer_bytes", 0))

    @_rpc
    def Stats(self, request, context):
        hv = self.hv
        transports = self._transport()
        vms = [convert.vm_stats(s, transports.get(s.vm_id)) for s in hv.all_stats()]
        d = hv.dispatcher
        gaps = list(d.switch_gaps)
        try:
            planned = [pb.PlannedLaunch(vm_id=t.vm_id, launch_id=t.launch_id, wclass=t.wclass.name)
                       for t in hv.lookahead()]
        except Exception:
            log.exception("look-ahead unavailable")
            planned = []
        sched = pb.SchedulerStats(busy_seconds=d.busy_seconds, launches=d.launches, vm_switches=d.switches,
                                  switch_p50_seconds=_percentile(gaps, 50),
                                  switch_p99_seconds=_percentile(gaps, 99),
                                  lookahead_depth=hv.lookahead_depth, lookahead=planned)
        return pb.StatsResponse(vms=vms, device=convert.device(hv.device_info()), scheduler=sched,
                                time=time.time(), devices=[convert.device_use(u) for u in hv.device_stats()])

    # ---------------------------------------------------------------- kernels, buffers
    @_rpc
    def Compile(self, request, context):
        if len(request.source.encode()) > limits.MAX_SOURCE_BYTES:
            raise E.InvalidArgument(f"source of {len(request.source.encode())} bytes exceeds the limit of "
                                    f"{limits.MAX_SOURCE_BYTES}")
        kernels = self.hv.compile(request.vm_id, request.source, session=RPC_SESSION)
        return pb.CompileResponse(kernels=[convert.kernel_info(k) for k in kernels])

    @_rpc
    def FreeKernel(self, request, context):
        self.hv.free_kernel(request.vm_id, request.kernel_id, session=RPC_SESSION)
        return pb.Empty()

    @_rpc
    def Alloc(self, request, context):
        info = self.hv.alloc(request.vm_id, request.dtype, list(request.shape), session=RPC_SESSION)
        return convert.buffer_info(info)

    @_rpc
    def Free(self, request, context):
        self.hv.free(request.vm_id, request.handle, session=RPC_SESSION)
        return pb.Empty()

    @_rpc
    def Write(self, request, context):
        if len(request.data) > limits.MAX_TRANSFER_BYTES:
            raise E.InvalidArgument(f"{len(request.data)} bytes in one Write; the limit is "
                                    f"{limits.MAX_TRANSFER_BYTES} (send several at increasing offsets)")
        info = self.hv.buffer_info(request.vm_id, request.handle, session=RPC_SESSION)
        if request.offset + len(request.data) > info.nbytes:
            raise E.InvalidArgument(f"write of {len(request.data)} bytes at offset {request.offset} lies "
                                    f"outside buffer {request.handle} ({info.nbytes} bytes)")
        n = self.hv.write(request.vm_id, request.handle, request.offset, request.data, session=RPC_SESSION)
        return pb.WriteResponse(written=n)

    @_rpc
    def Read(self, request, context):
        info = self.hv.buffer_info(request.vm_id, request.handle, session=RPC_SESSION)
        if request.offset > info.nbytes:
            raise E.InvalidArgument(f"offset {request.offset} lies outside buffer {request.handle} "
                                    f"({info.nbytes} bytes)")
        length = request.length if request.HasField("length") else info.nbytes - request.offset
        if not request.HasField("length"):
            length = min(length, limits.MAX_TRANSFER_BYTES)
        if length > limits.MAX_TRANSFER_BYTES:
            raise E.InvalidArgument(f"{length} bytes in one Read; the limit is {limits.MAX_TRANSFER_BYTES}")
        data = self.hv.read(request.vm_id, request.handle, request.offset, length, session=RPC_SESSION)
        return pb.ReadResponse(data=data, nbytes=info.nbytes)

    # ---------------------------------------------------------------- launches
    @_rpc
    def Launch(self, request, context):
        if len(request.bindings) > limits.MAX_BINDINGS:
            raise E.InvalidArgument(f"{len(request.bindings)} bindings; at most {limits.MAX_BINDINGS}")
        if not request.timeout_seconds >= 0:
            raise E.InvalidArgument(f"timeout_seconds must be >= 0, got {request.timeout_seconds}")
        bindings = {name: _binding(name, b) for name, b in request.bindings.items()}
        # The timeout covers the whole call, queueing included: measured from here, not from
        # after launch() returns (a busy host may run much of the launch in between).
        deadline = time.monotonic() + request.timeout_seconds if request.timeout_seconds else None
        # Without a deadline this thread only waits for the result: it may run the launch
        # itself when the device is idle (the serial fast path, docs/scheduling.md); with
        # one it must stay free to answer DEADLINE_EXCEEDED on time.
        completion = self.hv.launch(
            request.vm_id, request.kernel_id, bindings,
            priority=request.priority if request.HasField("priority") else None,
            class_hint=request.class_hint or None, session=RPC_SESSION, run_here=not request.timeout_seconds)
        while not completion.done():
            if not context.is_active() or self._closing.is_set():
                raise E.Cancelled(f"stopped waiting for launch {completion.launch_id}; it runs to completion "
                                  "anyway")
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"launch {completion.launch_id} not complete after "
                                  f"{request.timeout_seconds:g} s; it runs to completion anyway")
            wait = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, max(deadline - time.monotonic(), 0))
            try:
                completion.wait(wait)
            except TimeoutError:
                pass
        return convert.launch_result(completion.wait(0))

    @_rpc
    def IdleHint(self, request, context):
        self.hv.idle_hint(request.vm_id, request.idle)
        return pb.Empty()

    # ---------------------------------------------------------------- shared models
    @_rpc
    def LoadModel(self, request, context):
        return convert.model_info(self.hv.load_model(request.name, request.path, request.dtype or "float32"))

    @_rpc
    def RemoveModel(self, request, context):
        self.hv.remove_model(request.name)
        return pb.Empty()

    @_rpc
    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[convert.model_info(m) for m in self.hv.list_models()])

    # ---------------------------------------------------------------- advisor
    @_rpc
    def GetAdvice(self, request, context):
        adv = self.daemon.advisor
        st = adv.snapshot_stats()
        resp = pb.AdviceResponse(mode=st.mode, endpoint=st.endpoint, model=st.model, breaker=st.breaker,
                                 requests=st.requests, applied=st.applied, rejected=st.rejected,
                                 rows=[convert.advice_row(r) for r in adv.rows()], last_error=st.last_error)
        if st.agreement is not None:
            resp.agreement = st.agreement
        return resp

    @_rpc
    def DecideAdvice(self, request, context):
        adv = self.daemon.advisor
        row = adv.accept(request.vm_id) if request.accept else adv.reject(request.vm_id)
        return convert.advice_row(row)

    # ---------------------------------------------------------------- events
    def WatchEvents(self, request, context):
        if len(request.vm_ids) + len(request.kinds) > limits.MAX_EVENT_FILTERS:
            abort(context, E.InvalidArgument(f"at most {limits.MAX_EVENT_FILTERS} filters"))
        q = EventQueue(limits.EVENT_QUEUE_DEPTH, request.vm_ids, request.kinds)
        with self._lock:
            full = len(self._watchers) >= limits.MAX_EVENT_WATCHERS
            if not full and not self._closing.is_set():
                self._watchers.add(q)
        if full:
            abort(context, E.Busy(f"{limits.MAX_EVENT_WATCHERS} event streams are open, the limit"))
        unsubscribe = self.hv.subscribe(q.push)
        context.add_callback(q.close)  # the client went away: wake the loop now
        try:
            while context.is_active() and not q.closed:
                got = q.get(_POLL_SECONDS)
                if got is not None:
                    yield convert.event(*got)
        finally:
            unsubscribe()
            with self._lock:
                self._watchers.discard(q)


def _binding(name: str, b: pb.Binding) -> int | Scalar:
    which = b.WhichOneof("value")
    if which == "handle":
        return b.handle
    if which == "scalar":
        kind = b.scalar.WhichOneof("value")
        if kind is None:
            raise E.InvalidArgument(f"scalar binding {name!r} has no value")
        value = b.scalar.f if kind == "f" else b.scalar.i
        dtype = None
        if b.scalar.dtype:
            try:
                dtype = DType(b.scalar.dtype)
            except ValueError:
                raise E.InvalidArgument(f"scalar binding {name!r}: unknown dtype {b.scalar.dtype!r}") from None
        return Scalar(value, dtype)
    raise E.InvalidArgument(f"binding {name!r} has neither a handle nor a scalar")
