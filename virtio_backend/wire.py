"""The pxOS wire ABI on the host: the guest's own header, read through cffi.

The structs that cross the virtqueue are defined once, in C, in
``guest_driver/include/uapi/pxos_gpu.h``. This module ``cdef``s the text between that
file's ``PXOS_CDEF_BEGIN`` and ``PXOS_CDEF_END`` markers (after typedefs for the kernel's
``__le16``/``__le32``/``__le64``/``__u8``), so the host and the guest module cannot drift:

- ``ffi`` knows every ``struct pxos_*``; ``ffi.sizeof``/``ffi.offsetof`` are the layout.
- Every ``#define PXOS_*`` integer is a module constant of the same name.
- Every ``enum pxos_*`` is an ``IntEnum`` whose members are named exactly as the header
  names them (``PxosStatus.PXOS_S_NOT_FOUND``); the values come from the header itself.

At import the layout is checked twice: against the header's own ``_Static_assert`` lines
(what the guest's compiler checks) and against ``STRUCT_SIZES`` below (what the host was
written against). A mismatch is a host build defect and stops the import.

The fields are little-endian on the wire; cffi reads native order, so the host must be
little-endian (x86_64 and aarch64 as pxOS runs them are).

``layout()`` turns a struct (or a run of its fields) into a precompiled little-endian
``struct.Struct`` derived from cffi's own offsets: the per-request path packs and unpacks
with one C call instead of a ``ffi.new``/``ffi.from_buffer`` object and an attribute
access per field, and still cannot drift from the header.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import cffi

from hypervisor.errors import PxosError

HEADER_PATH = Path(__file__).resolve().parent.parent / "guest_driver" / "include" / "uapi" / "pxos_gpu.h"

# The kernel's fixed-width types, as the header uses them.
_KERNEL_TYPEDEFS = """
typedef uint8_t __u8;
typedef uint16_t __le16;
typedef uint32_t __le32;
typedef uint64_t __le64;
"""

# Every struct of the ABI and its size in bytes, as the host code was written against
# them. A header change that alters one must come with the host change (and an ABI bump).
STRUCT_SIZES: dict[str, int] = {
    "pxos_ctrl_hdr": 24,
    "pxos_resp_hdr": 160,
    "pxos_cmd_get_info": 32,
    "pxos_resp_info": 320,
    "pxos_cmd_alloc": 96,
    "pxos_resp_alloc": 176,
    "pxos_cmd_free": 32,
    "pxos_cmd_transfer": 48,
    "pxos_cmd_compile": 32,
    "pxos_kernel_desc": 80,
    "pxos_diag": 160,
    "pxos_resp_compile": 4008,
    "pxos_cmd_kernel": 32,
    "pxos_param_desc": 144,
    "pxos_resp_kernel_info": 4856,
    "pxos_binding": 80,
    "pxos_cmd_launch": 48,
    "pxos_resp_launch": 200,
    "pxos_cmd_stats": 24,
    "pxos_resp_stats": 248,
    "pxos_cmd_idle_hint": 32,
    "pxos_cmd_session_close": 24,
    "pxos_resp_session_close": 184,
    "pxos_capset": 16,
    "pxos_drm_submit": 32,
}


class WireAbiMismatch(PxosError):
    """The header and the host disagree on the ABI's layout (a build defect, never a guest's)."""


def _cdef_block(text: str) -> str:
    m = re.search(r"/\*\s*PXOS_CDEF_BEGIN\s*\*/(.*?)/\*\s*PXOS_CDEF_END\s*\*/", text, re.S)
    if m is None:
        raise WireAbiMismatch(f"{HEADER_PATH}: no PXOS_CDEF_BEGIN .. PXOS_CDEF_END block")
    return m.group(1)


def _eval_size_expr(expr: str) -> int:
    # The header's asserts use sums and products of integers only ("160 + 40").
    if not re.fullmatch(r"[0-9+*() ]+", expr):
        raise WireAbiMismatch(f"cannot evaluate size expression {expr!r} in {HEADER_PATH.name}")
    return int(eval(expr, {"__builtins__": {}}, {}))  # digits and + * ( ) only, checked above


def _check_layout(ffi: cffi.FFI, header_text: str) -> None:
    for name, size in STRUCT_SIZES.items():
        got = ffi.sizeof(f"struct {name}")
        if got != size:
            raise WireAbiMismatch(f"struct {name}: header gives {got} bytes, host expects {size}")
    # The header also asserts its ioctl structs, which live outside the cdef block (they
    # never cross the virtqueue): check the asserts of the block's own structs.
    wire_structs = set(re.findall(r"struct (\w+)\s*\{", _cdef_block(header_text)))
    asserts = [
        (name, expr)
        for name, expr in re.findall(r"_Static_assert\(\s*sizeof\(struct (\w+)\)\s*==\s*([^,]+),", header_text)
        if name in wire_structs
    ]
    if not asserts:
        raise WireAbiMismatch(f"{HEADER_PATH.name}: no _Static_assert size checks found")
    for name, expr in asserts:
        want = _eval_size_expr(expr)
        got = ffi.sizeof(f"struct {name}")
        if got != want:
            raise WireAbiMismatch(f"struct {name}: cffi lays it out in {got} bytes, the header asserts {want}")


def _build() -> tuple[cffi.FFI, object, str]:
    if sys.byteorder != "little":
        raise WireAbiMismatch("the pxOS wire ABI is little-endian; this host is not")
    text = HEADER_PATH.read_text(encoding="utf-8")
    block = _cdef_block(text)
    ffi = cffi.FFI()
    ffi.cdef(_KERNEL_TYPEDEFS + block)
    _check_layout(ffi, text)
    # dlopen(None) gives a library object that carries the cdef's integer constants.
    return ffi, ffi.dlopen(None), block


ffi, _lib, _BLOCK = _build()


def _enum(cls_name: str, c_name: str) -> type[IntEnum]:
    elements = ffi.typeof(f"enum {c_name}").elements  # value -> NAME, straight from the header
    return IntEnum(cls_name, {name: value for value, name in sorted(elements.items())}, module=__name__)


PxosCmdType = _enum("PxosCmdType", "pxos_cmd_type")
PxosStatus = _enum("PxosStatus", "pxos_status")
PxosDtype = _enum("PxosDtype", "pxos_dtype")
PxosClass = _enum("PxosClass", "pxos_class")
PxosDirection = _enum("PxosDirection", "pxos_direction")
PxosBindingKind = _enum("PxosBindingKind", "pxos_binding_kind")

# The header's #defines, by the header's names (an attribute error here means the header
# lost one the host relies on).
PXOS_ABI_MAJOR: int = _lib.PXOS_ABI_MAJOR
PXOS_ABI_MINOR: int = _lib.PXOS_ABI_MINOR
PXOS_MAGIC: int = _lib.PXOS_MAGIC
PXOS_MAX_RANK: int = _lib.PXOS_MAX_RANK
PXOS_MAX_NAME: int = _lib.PXOS_MAX_NAME
PXOS_MAX_MESSAGE: int = _lib.PXOS_MAX_MESSAGE
PXOS_MAX_BINDINGS: int = _lib.PXOS_MAX_BINDINGS
PXOS_MAX_PARAMS: int = _lib.PXOS_MAX_PARAMS
PXOS_MAX_KERNELS: int = _lib.PXOS_MAX_KERNELS
PXOS_MAX_DIAGS: int = _lib.PXOS_MAX_DIAGS
PXOS_MAX_SOURCE_BYTES: int = _lib.PXOS_MAX_SOURCE_BYTES
PXOS_MAX_TRANSFER_BYTES: int = _lib.PXOS_MAX_TRANSFER_BYTES
PXOS_MAX_BUFFER_BYTES: int = _lib.PXOS_MAX_BUFFER_BYTES
PXOS_MAX_REQUEST_BYTES: int = _lib.PXOS_MAX_REQUEST_BYTES
PXOS_RESP: int = _lib.PXOS_RESP
PXOS_PRIORITY_DEFAULT: int = _lib.PXOS_PRIORITY_DEFAULT
PXOS_RANK_ANY: int = _lib.PXOS_RANK_ANY
PXOS_DIM_SYMBOLIC: int = _lib.PXOS_DIM_SYMBOLIC
PXOS_CAPSET_ID: int = _lib.PXOS_CAPSET_ID
PXOS_CAPSET_VERSION: int = _lib.PXOS_CAPSET_VERSION

# The vendor command range the header reserves (0x7000..0x70ff); docs/protocol.md says why.
PXOS_CMD_FIRST = 0x7000
PXOS_CMD_LAST = 0x70FF


def sizeof(struct_name: str) -> int:
    """Size in bytes of ``struct <struct_name>`` as the header lays it out."""
    return ffi.sizeof(f"struct {struct_name}")


def cdef_text() -> str:
    """The exact C text handed to cffi (typedefs + the header's block), for docs and tests."""
    return _KERNEL_TYPEDEFS + _BLOCK


# ---- precompiled layouts ----------------------------------------------------------------

# cffi primitive type -> struct format code (little-endian, standard sizes).
_FORMAT_CODES = {"uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "uint64_t": "Q", "char": "c"}


@dataclass(frozen=True)
class StructLayout:
    """Fields of a wire struct as one ``struct.Struct``, from byte ``offset`` of the C struct.

    ``fields`` are the top-level field names covered, in order. Values come flattened in
    memory order: a nested struct gives its own fields' values, a ``char``/``__u8`` array
    one ``bytes`` value (NUL-padded when packed), any other array one value per element.
    Gaps the compiler leaves between fields are pad bytes (``x``), never values.
    """

    struct_name: str
    fields: tuple[str, ...]
    offset: int
    struct: struct.Struct

    @property
    def size(self) -> int:
        return self.struct.size


def _format(ctype) -> str:
    """The struct format of one field type (a nested struct is laid out from its own start)."""
    if ctype.kind == "primitive":
        return _FORMAT_CODES[ctype.cname]
    if ctype.kind == "array":
        item = ctype.item
        if item.kind == "primitive" and item.cname in ("char", "uint8_t"):
            return f"{ctype.length}s"
        if item.kind == "primitive":
            return f"{ctype.length}{_FORMAT_CODES[item.cname]}"
        raise WireAbiMismatch(f"{ctype.cname}: arrays of structs have no flat layout (use ffi)")
    if ctype.kind == "struct":
        return _run_format(ctype, [name for name, _ in ctype.fields], end=ffi.sizeof(ctype))[0]
    raise WireAbiMismatch(f"{ctype.cname}: no struct format for a {ctype.kind}")


def _run_format(ctype, names: Sequence[str], end: int | None = None) -> tuple[str, int]:
    """Format and start offset of the consecutive fields ``names`` of struct ``ctype``;
    pad bytes up to ``end`` when given (the struct's own trailing padding)."""
    fields = dict(ctype.fields)
    order = [name for name, _ in ctype.fields]
    missing = [n for n in names if n not in fields]
    if missing or not names:
        raise WireAbiMismatch(f"{ctype.cname} has no field(s) {missing or 'given'}")
    first = order.index(names[0])
    if order[first:first + len(names)] != list(names):
        raise WireAbiMismatch(f"{ctype.cname}: {list(names)} are not consecutive fields in this order")
    start = pos = fields[names[0]].offset
    fmt = ""
    for name in names:
        f = fields[name]
        if f.bitsize != -1:
            raise WireAbiMismatch(f"{ctype.cname}.{name}: bit-fields have no wire layout")
        if f.offset > pos:
            fmt += f"{f.offset - pos}x"
        fmt += _format(f.type)
        pos = f.offset + ffi.sizeof(f.type)
    if end is not None and end > pos:
        fmt += f"{end - pos}x"
    return fmt, start


def layout(struct_name: str, fields: Sequence[str] | None = None) -> StructLayout:
    """``struct <struct_name>`` (every field and its trailing padding), or just the
    consecutive top-level ``fields`` named (in order), as a ``StructLayout``. Raises
    ``WireAbiMismatch`` when the header has no such fields in that order, so code that
    unpacks by position fails at import, not on the wire, if the header changes."""
    ctype = ffi.typeof(f"struct {struct_name}")
    whole = fields is None
    names = [name for name, _ in ctype.fields] if whole else list(fields)
    fmt, start = _run_format(ctype, names, end=ffi.sizeof(ctype) if whole else None)
    packed = struct.Struct("<" + fmt)
    last = dict(ctype.fields)[names[-1]]
    want = (ffi.sizeof(ctype) if whole else last.offset + ffi.sizeof(last.type)) - start
    if packed.size != want:  # pragma: no cover - would mean cffi and struct disagree
        raise WireAbiMismatch(f"struct {struct_name}: flat layout is {packed.size} bytes, cffi says {want}")
    return StructLayout(struct_name, tuple(names), start, packed)
