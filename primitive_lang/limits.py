"""Every size a primitive program controls, capped by a named constant (docs/language.md, "Limits").

A guest chooses the source text, and through it how much work the host does to parse,
validate, bind and run it. Each constant below bounds one of those costs; a source over any
of them is rejected with a ``limit`` diagnostic before the work it would cause is done.
Where the wire ABI (guest_driver/include/uapi/pxos_gpu.h) has the same limit, ours is never
larger than its ``PXOS_MAX_*`` value, so anything that compiles also fits the wire.
"""

from __future__ import annotations

#: Bytes of UTF-8 source in one compile: = PXOS_MAX_SOURCE_BYTES. Parsing is linear, so
#: this caps the parse time of one request (the benchmark times a source of this size).
MAX_SOURCE_BYTES = 65536

#: Kernels in one source: = PXOS_MAX_KERNELS (one COMPILE response carries 16 descriptors).
MAX_KERNELS = 16

#: Params of one kernel: = PXOS_MAX_PARAMS (KERNEL_INFO) = PXOS_MAX_BINDINGS (LAUNCH).
MAX_PARAMS = 32

#: Characters of a kernel, param, local or dimension name: PXOS_MAX_NAME is 64 bytes with
#: the NUL terminator. Names are ASCII by the grammar, so characters = bytes.
MAX_IDENTIFIER_LEN = 63

#: Op statements of one kernel as written (REPEAT lines not counted). Bounds validation and
#: the per-kernel tables the host keeps; a real kernel is a few dozen statements.
MAX_STATEMENTS = 1024

#: Op statements one launch executes with every REPEAT expanded. Each is at least one array
#: operation dispatched by the executor (~10 us even when tiny), so this caps the time one
#: launch can hold the executor through dispatch overhead alone at well under a second.
MAX_EXECUTED_STATEMENTS = 1 << 16

#: REPEAT blocks nested inside each other. Bounds the recursion of every pass over the AST.
MAX_REPEAT_DEPTH = 8

#: ``n`` of one ``REPEAT n:``; never more than MAX_EXECUTED_STATEMENTS could allow anyway.
MAX_REPEAT_COUNT = 1 << 16

#: Dimensions of one tensor: = PXOS_MAX_RANK (the ALLOC and param descriptors carry 8 dims).
MAX_RANK = 8

#: Elements of one tensor (param or local). 1 << 28 float64 elements are 2 GiB, which is
#: PXOS_MAX_BUFFER_BYTES: no single buffer or temporary a kernel creates can be larger.
MAX_ELEMENTS = 1 << 28

#: Characters of one number literal. Python's int() is quadratic in the digit count and
#: refuses more than 4300 digits; no meaningful int64 or float64 literal needs more.
MAX_NUMBER_LEN = 40

#: Diagnostics collected for one source or one bind. After this many the rest of the source
#: is not examined (one more ``limit`` diagnostic says so): a 64 KiB source of garbage must
#: not cost thousands of error objects. PXOS_MAX_DIAGS (16) of them reach a guest.
MAX_DIAGNOSTICS = 100

#: Compiled programs (and rejected sources) kept by the compile cache, keyed by sha256.
COMPILE_CACHE_SIZE = 256

#: Statements (plus params) of all cached programs together: the cache's size bound. Every
#: VM's guests share the cache, and 256 of the largest programs (5000+ statements each)
#: would hold close to a gigabyte; 65536 statements are tens of MiB (1-3 KiB each).
COMPILE_CACHE_STATEMENTS = 1 << 16

#: GPU_PRIORITY range, as the LAUNCH priority field takes it.
MIN_PRIORITY = 0
MAX_PRIORITY = 100
