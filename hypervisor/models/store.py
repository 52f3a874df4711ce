"""The model store: models the operator loads once, whose tensors every VM may read.

A model's tensors become ordinary pxOS buffers (so residency, overcommit and prefetch move
them like any other), held by an account of their own in the memory manager (a negative
id, ``-model_id``) and marked read-only. A guest session opens a model by name
(MODEL_OPEN) and then binds its tensors by handle, like its own buffers; WRITE, FREE and
output bindings of them are refused with ``ReadOnly``.

Charging (docs/memory.md, "Shared models"): a model's bytes are held once, on the device
pool (and host budget under overcommit), and charged to no VM's quota: the operator chose
to load it, as a host's page cache holds a shared library once for every process. A VM's
quota covers what it allocates itself (its KV cache, activations, outputs); the pool must
hold the loaded models beside the quotas.

The store's methods run under the hypervisor's lock, except ``load``, which reads and
dequantizes the file without it (seconds for a large model) and takes the lock only to
allocate each tensor and to publish the model.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from primitive_lang import TensorSpec
from primitive_lang.ast import DType

from .. import errors as E
from .gguf_file import ModelFile, open_gguf

if TYPE_CHECKING:
    from ..memory import Buffer, MemoryManager

log = logging.getLogger("pxos.models")

#: Models loaded at once. Each costs device or host memory the operator chose to spend;
#: the bound only keeps a runaway script from filling the store with names.
MAX_MODELS = 64
MAX_MODEL_NAME = 63
#: Element types a model's tensors may be stored as (quantized files are dequantized).
MODEL_DTYPES = (DType.FLOAT32, DType.FLOAT16)
#: The metadata JSON's format; a guest checks it.
METADATA_FORMAT = 1
#: A bound on the metadata a guest reads in one piece: one READ (PXOS_MAX_TRANSFER_BYTES).
MAX_METADATA_BYTES = 8 << 20
#: Unlimited quota for a model's account: models are charged to the pool, not to a quota.
_NO_QUOTA = 1 << 62


@dataclass(frozen=True)
class ModelInfo:
    model_id: int
    name: str
    path: str
    architecture: str
    dtype: str
    ntensors: int
    nbytes: int  # tensors + metadata, held once
    device_bytes: int  # of which on the device now
    host_bytes: int  # of which in host RAM only
    users: tuple[int, ...]  # VMs with the model open
    opens: int  # open sessions, every VM
    load_seconds: float
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelOpen:
    """What MODEL_OPEN answers."""

    model_id: int
    meta_handle: int
    meta_bytes: int
    model_bytes: int
    ntensors: int


@dataclass(frozen=True)
class ModelPlan:
    """A model's id and buffer handles, which every device's copy of it shares."""

    model_id: int
    handles: dict[str, int]  # tensor name -> handle
    meta_handle: int


@dataclass(eq=False)
class _Model:
    model_id: int
    name: str
    path: str
    architecture: str
    dtype: DType
    config: dict
    tensors: dict[str, Buffer]
    meta: Buffer
    meta_bytes: int
    load_seconds: float
    by_handle: dict[int, Buffer] = field(default_factory=dict)
    opens: Counter = field(default_factory=Counter)  # (vm_id, session) -> times opened

    @property
    def account(self) -> int:
        return -self.model_id


def check_model_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_MODEL_NAME or not name.isprintable() \
            or any(ch.isspace() for ch in name):
        raise E.InvalidArgument(f"a model name is 1..{MAX_MODEL_NAME} printable characters without "
                                f"spaces, got {name!r}")


class ModelStore:
    def __init__(self, lock: threading.RLock, memory: MemoryManager,
                 emit: Callable[..., None] = lambda *a, **k: None):
        self._lock = lock
        self._memory = memory
        self._emit = emit
        self._models: dict[str, _Model] = {}
        self._loading: set[str] = set()
        self._by_handle: dict[int, _Model] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ operator side
    def load(self, name: str, path: str, dtype: DType | str = DType.FLOAT32, *,
             plan: ModelPlan | None = None) -> ModelInfo:
        """Read a GGUF file into read-only buffers; the name must be new. With ``plan``
        (another device's copy of the same model: hypervisor/devices.py) the copy takes the
        same model id and buffer handles, so a guest's handles hold on either device."""
        check_model_name(name)
        try:
            dt = DType(dtype)
        except ValueError:
            raise E.InvalidArgument(f"model dtype must be one of {', '.join(d.value for d in MODEL_DTYPES)}, "
                                    f"got {dtype!r}") from None
        if dt not in MODEL_DTYPES:
            raise E.InvalidArgument(f"model dtype must be one of {', '.join(d.value for d in MODEL_DTYPES)}")
        with self._lock:
            if name in self._models or name in self._loading:
                raise E.AlreadyExists(f"a model named {name} is already loaded")
            if len(self._models) + len(self._loading) >= MAX_MODELS:
                raise E.InvalidArgument(f"{MAX_MODELS} models are loaded, the limit; remove one first")
            model_id = next(self._ids) if plan is None else plan.model_id
            if any(m.model_id == model_id for m in self._models.values()):
                raise E.AlreadyExists(f"model id {model_id} is taken on this device")
            self._memory.add_vm(-model_id, _NO_QUOTA)
            self._loading.add(name)
        t0 = time.monotonic()
        try:
            mf = open_gguf(path)
            tensors = self._load_tensors(model_id, mf, dt, plan)
            meta, meta_bytes = self._write_metadata(model_id, name, mf, dt, tensors,
                                                    plan.meta_handle if plan is not None else None)
        except BaseException:
            with self._lock:
                self._loading.discard(name)
                self._memory.remove_vm(-model_id)
            raise
        model = _Model(model_id, name, mf.path, mf.architecture, dt, mf.config, tensors, meta, meta_bytes,
                       time.monotonic() - t0)
        with self._lock:
            self._loading.discard(name)
            for buf in [*tensors.values(), meta]:
                buf.read_only = True
                model.by_handle[buf.handle] = buf
                self._by_handle[buf.handle] = model
            self._models[name] = model
            info = self._info(model)
        log.info("model %s loaded from %s: %d tensors, %d bytes as %s in %.1f s", name, mf.path,
                 len(tensors), info.nbytes, dt.value, model.load_seconds)
        self._emit("model_added", None, model=name, nbytes=info.nbytes, tensors=len(tensors))
        return info

    def _put(self, model_id: int, spec: TensorSpec, data: np.ndarray, handle: int | None = None) -> Buffer:
        """A new buffer of the model's account holding ``data`` (copied without the lock,
        the buffer pinned by a transfer so nothing moves it meanwhile)."""
        mem = self._memory
        with self._lock:
            buf = mem.alloc(-model_id, 0, spec, handle=handle)
            target, on_device, waits = mem.begin_transfer(buf, writing=True)
        try:
            for fence in waits:
                fence.wait()
            mem.copy_in(target, on_device, 0, [memoryview(data).cast("B")])
        finally:
            with self._lock:
                mem.end_transfer(buf)
        return buf

    def _load_tensors(self, model_id: int, mf: ModelFile, dtype: DType,
                      plan: ModelPlan | None = None) -> dict[str, Buffer]:
        out: dict[str, Buffer] = {}
        for entry, arr in mf.arrays(np.dtype(dtype.value)):
            handle = None
            if plan is not None:
                handle = plan.handles.get(entry.name)
                if handle is None:
                    raise E.ModelError(f"{mf.path}: tensor {entry.name} is not in the model's other copies "
                                       "(the file changed since it was first loaded)")
            out[entry.name] = self._put(model_id, TensorSpec(dtype, entry.shape), arr, handle)
        return out

    def _write_metadata(self, model_id: int, name: str, mf: ModelFile, dtype: DType,
                        tensors: dict[str, Buffer], handle: int | None = None) -> tuple[Buffer, int]:
        meta = {
            "format": METADATA_FORMAT, "model_id": model_id, "name": name, "architecture": mf.architecture,
            "general_name": mf.name, "dtype": dtype.value, "config": mf.config, "tokenizer": mf.tokenizer,
            "tensors": {e.name: {"handle": tensors[e.name].handle, "dtype": dtype.value, "shape": list(e.shape),
                                 "source_type": e.source_type} for e in mf.tensors},
        }
        data = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(data) > MAX_METADATA_BYTES:
            raise E.ModelError(f"{mf.path}: the model's metadata is {len(data)} bytes, more than "
                               f"{MAX_METADATA_BYTES} (one READ)")
        words = np.zeros(max(math.ceil(len(data) / 4), 1), dtype=np.int32)
        words.view(np.uint8)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        return self._put(model_id, TensorSpec(DType.INT32, words.shape), words, handle), len(data)

    def remove(self, name: str) -> None:
        with self._lock:
            model = self._get(name)
            if model.opens:
                vms = sorted({vm for vm, _ in model.opens})
                raise E.ModelInUse(f"model {name} is open in VM {', '.join(map(str, vms))}; it can be removed "
                                   "once every guest has closed it (or its VM is reset or removed)")
            busy = [b for b in model.by_handle.values() if b.busy]
            if busy:
                raise E.ModelInUse(f"model {name} is read by {len(busy)} tensors' queued or running launches; "
                                   "retry when they finish")
            for h in model.by_handle:
                self._by_handle.pop(h, None)
            del self._models[name]
            self._memory.remove_vm(model.account)
        log.info("model %s removed", name)
        self._emit("model_removed", None, model=name)

    def plan(self, name: str) -> ModelPlan:
        """What another device's copy of model ``name`` must match (ids and handles)."""
        with self._lock:
            m = self._get(name)
            return ModelPlan(m.model_id, {n: b.handle for n, b in m.tensors.items()}, m.meta.handle)

    def tensor(self, handle: int) -> Buffer:
        """The buffer of a loaded model's tensor (or metadata) by handle (lock held)."""
        return self._by_handle[handle].by_handle[handle]

    def opens_of(self, vm_id: int) -> dict[str, dict[int, int]]:
        """The models VM ``vm_id`` has open: name -> {session: times opened} (lock held)."""
        out: dict[str, dict[int, int]] = {}
        for m in self._models.values():
            for (vm, session), n in m.opens.items():
                if vm == vm_id:
                    out.setdefault(m.name, {})[session] = n
        return out

    def adopt_opens(self, vm_id: int, opens: dict[str, dict[int, int]]) -> None:
        """The VM moved here with these models open (lock held; each is loaded here)."""
        for name, sessions in opens.items():
            m = self._get(name)
            for session, n in sessions.items():
                m.opens[(vm_id, session)] += n

    def list(self) -> list[ModelInfo]:
        with self._lock:
            return [self._info(m) for m in sorted(self._models.values(), key=lambda m: m.model_id)]

    def info(self, name: str) -> ModelInfo:
        with self._lock:
            return self._info(self._get(name))

    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._memory.vm(m.account).live_bytes for m in self._models.values())

    def _get(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise E.NotFound(f"no model named {name!r}" + (" (it is still loading)" if name in self._loading else ""))
        return model

    def _info(self, m: _Model) -> ModelInfo:
        acct = self._memory.vm(m.account)
        return ModelInfo(m.model_id, m.name, m.path, m.architecture, m.dtype.value, len(m.tensors),
                         acct.live_bytes, acct.device_bytes, acct.host_bytes,
                         tuple(sorted({vm for vm, _ in m.opens})), sum(m.opens.values()), m.load_seconds,
                         dict(m.config))

    # ------------------------------------------------------------------ guest side (lock held)
    def open(self, vm_id: int, session: int, name: str) -> ModelOpen:
        check_model_name(name)
        model = self._get(name)
        model.opens[(vm_id, session)] += 1
        return ModelOpen(model.model_id, model.meta.handle, model.meta_bytes,
                         self._memory.vm(model.account).live_bytes, len(model.tensors))

    def close(self, vm_id: int, session: int, model_id: int) -> None:
        for m in self._models.values():
            if m.model_id == model_id and m.opens.get((vm_id, session)):
                m.opens[(vm_id, session)] -= 1
                if not m.opens[(vm_id, session)]:
                    del m.opens[(vm_id, session)]
                return
        raise E.NotFound(f"model {model_id} is not open in this session")

    def close_all(self, vm_id: int, session: int | None = None) -> int:
        """Close every model a session (or, with session None, the whole VM) has open."""
        closed = 0
        for m in self._models.values():
            for key in [k for k in m.opens if k[0] == vm_id and (session is None or k[1] == session)]:
                closed += m.opens.pop(key)
        return closed

    def shared_buffer(self, vm_id: int, session: int, handle: int) -> Buffer:
        """A model tensor's buffer, if this session has its model open; else NotFound."""
        model = self._by_handle.get(handle)
        if model is None or (vm_id, session) not in model.opens:
            raise E.NotFound(f"no buffer with handle {handle}")
        return model.by_handle[handle]

    def is_shared_handle(self, vm_id: int, session: int, handle: int) -> bool:
        model = self._by_handle.get(handle)
        return model is not None and (vm_id, session) in model.opens
