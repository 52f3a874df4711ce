"""``pxosctl run``: a host-side launch on a VM's behalf, over gRPC.

Compiles the file, picks the kernel, allocates a buffer for every tensor param (inputs
from ``--bind``; outputs from ``--bind`` or, when not bound, zero-filled at the shape the
kernel declares, its symbolic dims resolved from the bound inputs), writes the inputs,
launches, reads the outputs, prints a summary (or saves ``NAME.npy`` files with ``--out``)
and frees everything it made, whatever happened.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ctl import EXIT_FAILED, EXIT_OK, UsageError
from .ctl_format import print_json
from .rpc import pxos_pb2 as pb
from .rpc.client import Client

_SHAPE = re.compile(r"^\d+([x,]\d+)*$")


@dataclass
class Input:
    """What one --bind asks for: an array to upload, or a scalar value."""

    name: str
    array: np.ndarray | None = None  # None with zeros=True: allocate, no upload
    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None
    scalar: float | int | None = None
    zeros: bool = False


def _shape(text: str, spec: str) -> tuple[int, ...]:
    if not _SHAPE.match(text):
        raise UsageError(f"--bind {spec}: shape must look like 64 or 64x128, got {text!r}")
    return tuple(int(d) for d in re.split("[x,]", text))


def _dtype(text: str, spec: str) -> np.dtype:
    if text not in ("float16", "float32", "float64", "int32", "int64", "float", "int"):
        raise UsageError(f"--bind {spec}: unknown dtype {text!r} (float16|float32|float64|int32|int64)")
    return np.dtype({"float": "float32", "int": "int32"}.get(text, text))


def parse_bind(spec: str, params: dict[str, pb.ParamInfo], rng: np.random.Generator) -> Input:
    name, sep, what = spec.partition("=")
    if not sep or not name or not what:
        raise UsageError(f"--bind {spec!r}: expected NAME=SPEC")
    param = params.get(name)
    if param is None:
        raise UsageError(f"--bind {spec}: the kernel has no param {name!r} (params: {', '.join(params)})")
    declared = np.dtype(param.dtype)
    kind, _, rest = what.partition(":")
    if kind == "scalar":
        try:
            value = float(rest) if any(c in rest.lower() for c in ".en") else int(rest)
        except ValueError:
            raise UsageError(f"--bind {spec}: {rest!r} is not a number") from None
        return Input(name, scalar=value)
    if param.scalar:
        raise UsageError(f"--bind {spec}: {name} is a scalar param; bind it as {name}=scalar:VALUE")
    if kind in ("random", "zeros"):
        shape_text, _, dtype_text = rest.partition(":")
        shape = _shape(shape_text, spec)
        dtype = _dtype(dtype_text, spec) if dtype_text else declared
        if kind == "zeros":
            return Input(name, shape=shape, dtype=dtype, zeros=True)
        if dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        else:
            array = rng.integers(-100, 100, size=shape, dtype=dtype)
        return Input(name, array=array, shape=shape, dtype=dtype)
    if what.endswith(".npy"):
        try:
            array = np.load(what, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--bind {spec}: cannot load {what}: {exc}") from None
        if array.dtype.newbyteorder("=") != declared:
            raise UsageError(f"--bind {spec}: {what} holds {array.dtype} but param {name} is {declared}")
        array = np.ascontiguousarray(array, dtype=declared)
        return Input(name, array=array, shape=array.shape, dtype=declared)
    raise UsageError(f"--bind {spec}: expected random:SHAPE[:DTYPE], zeros:SHAPE[:DTYPE], FILE.npy or "
                     "scalar:VALUE")


def resolve_outputs(kernel: pb.KernelInfo, inputs: dict[str, Input]) -> dict[str, Input]:
    """A zero-filled buffer for every tensor param not bound, at its declared shape."""
    symbols: dict[str, int] = {}
    for p in kernel.params:
        got = inputs.get(p.name)
        if got is None or got.shape is None or p.any_shape or len(p.dims) != len(got.shape):
            continue
        for dim, size in zip(p.dims, got.shape, strict=True):
            if not dim.isdigit():
                symbols.setdefault(dim, size)
    out = {}
    for p in kernel.params:
        if p.name in inputs:
            continue
        if p.scalar or p.direction == "in":
            raise UsageError(f"param {p.name} ({p.direction}) needs a value: --bind {p.name}=...")
        if p.any_shape:
            raise UsageError(f"output {p.name} has no declared shape; give --bind {p.name}=zeros:SHAPE")
        unknown = [d for d in p.dims if not d.isdigit() and d not in symbols]
        if unknown:
            raise UsageError(f"output {p.name}: cannot tell {', '.join(unknown)} from the inputs; "
                             f"give --bind {p.name}=zeros:SHAPE")
        shape = tuple(int(d) if d.isdigit() else symbols[d] for d in p.dims)
        out[p.name] = Input(p.name, shape=shape, dtype=np.dtype(p.dtype), zeros=True)
    return out


def _pick_kernel(kernels, name: str | None) -> pb.KernelInfo:
    if name is not None:
        for k in kernels:
            if k.name == name:
                return k
        raise UsageError(f"no kernel {name!r} in the file (kernels: {', '.join(k.name for k in kernels)})")
    if len(kernels) != 1:
        raise UsageError(f"the file has {len(kernels)} kernels ({', '.join(k.name for k in kernels)}); "
                         "choose one with --kernel")
    return kernels[0]


def _summary(array: np.ndarray) -> dict:
    info = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size:
        a = array.astype(np.float64)
        info.update(min=float(a.min()), max=float(a.max()), mean=float(a.mean()), sum=float(a.sum()))
    return info


def cmd_run(c: Client, args) -> int:
    try:
        source = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from None
    kernels = list(c.call("Compile", pb.CompileRequest(vm_id=args.vm, source=source)).kernels)
    handles: list[int] = []
    try:
        kernel = _pick_kernel(kernels, args.kernel)
        params = {p.name: p for p in kernel.params}
        rng = np.random.default_rng(args.seed)
        inputs = {}
        for spec in args.bind:
            got = parse_bind(spec, params, rng)
            if got.name in inputs:
                raise UsageError(f"param {got.name} is bound twice")
            inputs[got.name] = got
        tensors = {**inputs, **resolve_outputs(kernel, inputs)}
        req = pb.LaunchRequest(vm_id=args.vm, kernel_id=kernel.kernel_id, class_hint=args.wclass or "")
        if args.priority is not None:
            req.priority = args.priority
        buffers: dict[str, tuple[int, Input]] = {}
        for name, t in tensors.items():
            if t.scalar is not None:
                scalar = pb.ScalarValue(f=t.scalar) if isinstance(t.scalar, float) else pb.ScalarValue(i=t.scalar)
                req.bindings[name].scalar.CopyFrom(scalar)
                continue
            buf = c.call("Alloc", pb.AllocRequest(vm_id=args.vm, dtype=t.dtype.name, shape=list(t.shape)))
            handles.append(buf.handle)
            buffers[name] = (buf.handle, t)
            if t.array is not None:
                c.write_all(args.vm, buf.handle, t.array.tobytes())
            req.bindings[name].handle = buf.handle
        res = c.call("Launch", req, timeout=max(args.timeout, 3600.0))
        report = {"vm": args.vm, "kernel": kernel.name, "launch_id": res.launch_id, "status": res.status,
                  "class": res.wclass, "device_ms": res.device_ns / 1e6, "queue_ms": res.queue_ns / 1e6,
                  "total_ms": res.total_ns / 1e6, "outputs": {}}
        if res.status != "PXOS_S_OK":
            report["error"] = res.error
        else:
            for p in kernel.params:
                if p.direction == "in" or p.name not in buffers:
                    continue
                handle, t = buffers[p.name]
                array = np.frombuffer(c.read_all(args.vm, handle), dtype=t.dtype).reshape(t.shape)
                report["outputs"][p.name] = _summary(array)
                if args.out:
                    path = Path(args.out) / f"{p.name}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, array)
                    report["outputs"][p.name]["file"] = str(path)
    finally:
        for h in handles:
            _quietly(c, "Free", pb.BufferRef(vm_id=args.vm, handle=h))
        for k in kernels:
            _quietly(c, "FreeKernel", pb.KernelRef(vm_id=args.vm, kernel_id=k.kernel_id))
    _print_report(report, args.json)
    return EXIT_OK if res.status == "PXOS_S_OK" else EXIT_FAILED


def _quietly(c: Client, method: str, request) -> None:
    try:
        c.call(method, request)
    except Exception as exc:  # clean-up must not hide the outcome; say what was left behind
        print(f"pxosctl: warning: {method} failed: {exc}", file=sys.stderr)


def _print_report(r: dict, as_json: bool) -> None:
    if as_json:
        print_json(r)
        return
    if r["status"] != "PXOS_S_OK":
        print(f"pxosctl: error: launch {r['launch_id']} of {r['kernel']} failed: {r['status']}: {r['error']}",
              file=sys.stderr)
        return
    print(f"VM {r['vm']}: {r['kernel']} ran as {r['class']}: device {r['device_ms']:.3f} ms, "
          f"queued {r['queue_ms']:.3f} ms, total {r['total_ms']:.3f} ms")
    for name, o in r["outputs"].items():
        stats = (f" min {o['min']:.6g} max {o['max']:.6g} mean {o['mean']:.6g}" if "min" in o else "")
        saved = f" -> {o['file']}" if "file" in o else ""
        print(f"  {name}: {o['dtype']}[{'x'.join(map(str, o['shape']))}]{stats}{saved}")
