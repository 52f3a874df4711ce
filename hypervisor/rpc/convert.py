"""Hypervisor values (hypervisor/types.py) to pxos.v1 messages and back.

The servicer and pxosctl both use these, so a field is named and scaled in one place.
Shares and caps travel as percentages; achieved share as a fraction (as VMStats has it).
"""

from __future__ import annotations

import json
import math

from .. import types as T
from . import pxos_pb2 as pb


def vm_info(info: T.VMInfo) -> pb.VMInfo:
    msg = pb.VMInfo(vm_id=info.vm_id, name=info.name, memory_quota=info.memory_quota,
                    memory_used=max(info.memory_used, 0), share=info.share_pct,
                    default_class=info.default_class or "", socket=info.socket or "",
                    domain=info.domain or "", device=info.device)
    if info.cap_pct is not None:
        msg.cap = info.cap_pct
    return msg


def requests_of(status: dict) -> int:
    """Requests served, from a transport status (VhostUserTransport says ``requests_served``)."""
    return int(status.get("requests_served", status.get("requests", 0)) or 0)


def transport(status: dict | None) -> pb.TransportStatus:
    if not status:
        return pb.TransportStatus(present=False)
    return pb.TransportStatus(present=True, connected=bool(status.get("connected", False)),
                              features=int(status.get("features", 0) or 0),
                              requests=int(requests_of(status)),
                              errors=int(status.get("errors", 0) or 0))


def vm_stats(s: T.VMStats, transport_status: dict | None = None) -> pb.VMStats:
    msg = pb.VMStats(
        vm_id=s.vm_id, name=s.name, memory_quota=s.memory_quota, memory_used=max(s.memory_used, 0),
        memory_device_bytes=max(s.memory_device_bytes, 0), memory_host_bytes=max(s.memory_host_bytes, 0),
        share=s.share_pct, achieved_share=s.achieved_share, device_seconds_total=s.device_seconds_total,
        launches_total=s.launches_total, launches_failed=s.launches_failed,
        launches_by_class={k: int(v) for k, v in s.launches_by_class.items()},
        queue_depth=s.queue_depth, inflight=s.inflight, buffers=s.buffers, kernels=s.kernels,
        latency_p50_ms=s.latency_p50_ms, latency_p99_ms=s.latency_p99_ms,
        vm_switches_in=s.vm_switches_in, idle=s.idle,
        extra={k: float(v) for k, v in s.extra.items() if _is_number(v)},
        transport=transport(transport_status), device=s.device,
    )
    if s.cap_pct is not None:
        msg.cap = s.cap_pct
    return msg


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def device(d: T.DeviceInfo) -> pb.DeviceStats:
    return pb.DeviceStats(backend=d.backend, device_name=d.device_name, pool_bytes=d.pool_bytes,
                          pool_used=max(d.pool_used, 0), host_budget=d.host_budget,
                          host_used=max(d.host_used, 0), vendor=d.vendor, api=d.api, time_source=d.time_source)


def device_use(u: T.DeviceUse) -> pb.DeviceStats:
    msg = device(u.info)
    msg.id, msg.vms, msg.share_used, msg.utilisation = u.device, u.vms, u.share_used, u.utilisation
    msg.busy_seconds, msg.launches, msg.queue_depth = u.busy_seconds, u.launches, u.queue_depth
    return msg


def buffer_info(b: T.BufferInfo) -> pb.BufferInfo:
    dtype = getattr(b.dtype, "value", b.dtype)
    return pb.BufferInfo(handle=b.handle, nbytes=b.nbytes, dtype=str(dtype), shape=list(b.shape),
                         residency=b.residency)


def _direction(kernel, name: str) -> str:
    d = getattr(kernel, "directions", {}).get(name)
    if d is None:
        return "in"
    return str(getattr(d, "value", d)).lower()


def kernel_info(k: T.KernelInfo) -> pb.KernelInfo:
    checked = k.checked
    params = []
    for p in checked.params:
        shape = p.type.shape
        params.append(pb.ParamInfo(
            name=p.name, dtype=p.type.dtype.value, scalar=shape == (), any_shape=shape is None,
            dims=[str(d) for d in (shape or ())], direction=_direction(checked, p.name)))
    msg = pb.KernelInfo(kernel_id=k.kernel_id, name=k.name, params=params,
                        class_hint=checked.class_hint.value if checked.class_hint else "")
    if checked.priority is not None:
        msg.priority = checked.priority
    return msg


def launch_result(r: T.LaunchResult) -> pb.LaunchResponse:
    return pb.LaunchResponse(launch_id=r.launch_id, status=r.status, error=str(r.error) if r.error else "",
                             device_ns=max(r.device_ns, 0), queue_ns=max(r.queue_ns, 0),
                             total_ns=max(r.total_ns, 0), wclass=r.wclass, kernel=r.kernel)


def event(ev: T.Event, dropped: int) -> pb.Event:
    msg = pb.Event(kind=ev.kind, time=ev.time, dropped=dropped,
                   detail_json=json.dumps(ev.detail, default=_json_default, sort_keys=True))
    if ev.vm_id is not None:
        msg.vm_id = ev.vm_id
    return msg


def model_info(m) -> pb.ModelInfo:
    return pb.ModelInfo(model_id=m.model_id, name=m.name, path=m.path, architecture=m.architecture, dtype=m.dtype,
                        tensors=m.ntensors, bytes=m.nbytes, device_bytes=max(m.device_bytes, 0),
                        host_bytes=max(m.host_bytes, 0), users=list(m.users), opens=m.opens,
                        load_seconds=m.load_seconds, config_json=json.dumps(m.config, sort_keys=True))


def _json_default(value):
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)


def advice_row(r) -> pb.AdviceRow:
    """One VM's row of the advisor (hypervisor.advisor.VMAdviceState)."""
    import time

    cur = r.current
    row = pb.AdviceRow(vm_id=r.vm_id, source=cur.source, wclass=cur.wclass.name, rationale=cur.rationale,
                       status=r.status, detail=r.detail, heuristic_class=r.heuristic.wclass.name,
                       llm_class=r.llm.wclass.name if r.llm is not None else "",
                       applied=r.status in ("applied", "accepted"))
    if cur.share is not None:
        row.share = cur.share
    if cur.cap is not None:
        row.cap = cur.cap
    if r.llm_at is not None:
        row.age_seconds = max(0.0, time.time() - r.llm_at)
    return row
