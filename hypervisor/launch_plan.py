"""Launch plans: what launch() works out from a kernel and its bindings, kept for the next
launch with the same bindings (issue 14, the lean launch path).

Binding a launch checks every binding (a buffer handle or a Scalar) against the kernel's
params, binds the kernel to the buffers' dtypes and shapes, and derives the launch's cost,
temporaries, aliasing and read-only checks. All of that depends only on the kernel, the
bindings as given and the specs of the buffers bound, so a plan keyed by the bindings
holds it. A launch that finds a plan still looks up every buffer by its handle (a freed
buffer, or one of another session, raises NotFound exactly as before) and checks that the
buffer is the one the plan was made for (the same spec object, still writable where it is
written); anything else takes the full path, which raises the same typed errors.

Plans live in their VM's record (records.VMRecord.plans), at most PLANS_PER_VM (the oldest
goes first), and hold handles, specs and a weak reference to the bound kernel: no buffer
and no kernel is kept alive by a plan (a plan whose bound kernel has gone is made again),
and a plan of a freed kernel is never found (kernel ids are not reused, and the kernel is
looked up first). Their host memory is bounded per VM: 0.7 KiB for a plan with two params,
3 KiB with 17 (tracemalloc), at most ~9 KiB with 32, so at most ~2.2 MiB per VM.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import primitive_lang
from primitive_lang import BoundKernel, Direction, TensorSpec
from primitive_lang.ast import DType
from scheduler import LaunchCost, WorkloadClass

from . import errors as E
from .records import KernelRecord, VMRecord, check_scalar, class_of
from .types import Scalar

#: Launch plans kept per VM (see above): a guest cycling through more (kernel, bindings)
#: pairs than this takes the full path for some launches, nothing else.
PLANS_PER_VM = 256


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    bound_ref: weakref.ref  # -> BoundKernel (None once the bind cache let it go)
    buffers: tuple[tuple[str, int, TensorSpec, bool], ...]  # (param, handle, spec, written?)
    unique: tuple[str, ...]  # params whose handle comes first: one per distinct buffer
    distinct: bool  # no buffer bound to two params
    scalars: dict[str, Scalar]  # checked, their dtype resolved (read only)
    temp_bytes: int
    unique_bytes: int  # bytes of the distinct buffers
    cost: LaunchCost
    hint: WorkloadClass | None  # the kernel's class hint
    priority: int | None  # the kernel's priority


def plan_key(bindings: Mapping[str, int | Scalar]) -> tuple | None:
    """The bindings as a cache key, or None where they cannot be one (anything but plain
    ints and Scalars of plain numbers: those take the full path and its errors). A value's
    type is part of the key (True == 1, but a bool is no handle): handles alone give the
    items as they are; with a Scalar, each item carries its value's type."""
    items = tuple(bindings.items())
    for _, v in items:
        if type(v) is not int:
            break
    else:
        return items
    key = []
    for name, v in items:
        t = type(v)
        if t is int:
            key.append((name, int, v))
        elif t is Scalar and type(v.value) in (int, float):
            key.append((name, type(v.value), v.value, v.dtype))
        else:
            return None
    return tuple(key)


def build_plan(record: KernelRecord, bindings: Mapping[str, int | Scalar],
               lookup: Callable[[int], object]) -> tuple[LaunchPlan, BoundKernel, dict]:
    """The full path: check and bind (the errors of hypervisor/errors.py); returns the
    plan, the bound kernel and this launch's buffers {param: (buffer, written?)}."""
    kernel = record.info.checked
    if len(bindings) > primitive_lang.limits.MAX_PARAMS:
        raise E.InvalidArgument(f"{len(bindings)} bindings; a kernel has at most {primitive_lang.limits.MAX_PARAMS} params")
    declared = {p.name: p for p in kernel.params}
    specs: dict[str, TensorSpec] = {}
    buffers: dict[str, tuple] = {}
    scalars: dict[str, Scalar] = {}
    by_handle: dict[int, list[str]] = {}
    for name, value in bindings.items():
        if isinstance(value, Scalar):
            param = declared.get(name)
            dtype = value.dtype or (param.type.dtype if param is not None else DType.FLOAT64)
            check_scalar(name, value.value, dtype)
            specs[name] = TensorSpec(dtype, ())
            scalars[name] = Scalar(value.value, dtype)
        elif isinstance(value, int) and not isinstance(value, bool):
            buf = lookup(value)
            specs[name] = buf.spec
            writes = kernel.directions.get(name, Direction.IN) != Direction.IN
            if writes and buf.read_only:
                raise E.ReadOnly(f"param {name} is written by kernel {kernel.name}, but buffer {value} is "
                                 "a shared model's tensor (read-only)")
            buffers[name] = (buf, writes)
            by_handle.setdefault(value, []).append(name)
        else:
            raise E.InvalidArgument(f"binding {name!r} must be a buffer handle or a Scalar")
    try:
        bound: BoundKernel = record.bind(specs)
    except primitive_lang.PrimitiveError as exc:
        raise E.BindError(str(exc), exc.diagnostics) from exc
    for handle, names in by_handle.items():
        if len(names) > 1 and any(buffers[n][1] for n in names):
            raise E.BindError(
                f"buffer {handle} is bound to {', '.join(sorted(names))}, and one of them is written; "
                "an output must have a buffer of its own")
    c = bound.cost
    temp = c.peak_temp_bytes
    unique = tuple(names[0] for names in by_handle.values())
    plan = LaunchPlan(
        bound_ref=weakref.ref(bound),
        buffers=tuple((n, bindings[n], specs[n], w) for n, (_, w) in buffers.items()),
        unique=unique, distinct=len(unique) == len(buffers), scalars=scalars, temp_bytes=temp,
        unique_bytes=sum(buffers[n][0].nbytes for n in unique),
        cost=LaunchCost(c.flops, c.bytes_read, c.bytes_written, temp),
        hint=class_of(kernel.class_hint.value if kernel.class_hint else None),
        priority=kernel.priority)
    return plan, bound, buffers


def plan_launch(vm: VMRecord, record: KernelRecord, session: int, bindings: Mapping[str, int | Scalar],
                lookup: Callable[[int], object], own: dict | None = None) -> tuple[LaunchPlan, BoundKernel, dict]:
    """The launch's plan, bound kernel and buffers: the cached plan when its bound kernel
    and its buffers are still the ones it was made for, else the full path (whose plan is
    kept for next time). ``own``: the VM's buffers by handle, read first (a buffer freed or
    of another session, or a shared model's tensor, goes through ``lookup``)."""
    key = plan_key(bindings)
    if key is not None:
        key = (record.info.kernel_id, session, key)
        plan = vm.plans.get(key)
        if plan is not None:
            bound = plan.bound_ref()
            if bound is not None:
                buffers = {}
                get = own.get if own is not None else None
                for name, handle, spec, writes in plan.buffers:
                    buf = get(handle) if get is not None else None
                    if buf is None or buf.freed or buf.session != session:
                        buf = lookup(handle)
                    if buf.spec is not spec or (writes and buf.read_only):
                        break
                    buffers[name] = (buf, writes)
                else:
                    return plan, bound, buffers
    plan, bound, buffers = build_plan(record, bindings, lookup)
    if key is not None:
        plans = vm.plans
        if key not in plans and len(plans) >= PLANS_PER_VM:
            del plans[next(iter(plans))]
        plans[key] = plan
    return plan, bound, buffers
