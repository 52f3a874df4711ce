"""Bounds on what one gRPC request can make the daemon hold or do.

Operators are trusted more than guests, but a buggy or hostile client on the socket must
still not be able to exhaust the daemon's memory or threads; each size a client controls
is capped here, and the server's gRPC options are derived from these numbers.
"""

from __future__ import annotations

#: Bytes of buffer data in one Write or Read. Each call's payload is held in memory (the
#: request, then the copy into the buffer), so this bounds a call's memory; a larger buffer
#: is moved by several calls at increasing offsets (pxosctl does this).
MAX_TRANSFER_BYTES = 16 << 20

#: Bytes of program source in one Compile: the language's own limit
#: (primitive_lang.limits.MAX_SOURCE_BYTES, = PXOS_MAX_SOURCE_BYTES); checked here too so
#: a larger source is refused before it is decoded.
MAX_SOURCE_BYTES = 65536

#: gRPC message limit, both directions: the largest payload plus room for the envelope
#: (field tags, handles, offsets, a map of bindings).
MAX_MESSAGE_BYTES = MAX_TRANSFER_BYTES + (256 << 10)

#: Threads serving RPCs. A blocking Launch or a WatchEvents stream holds one for its
#: duration; the server refuses calls beyond this (RESOURCE_EXHAUSTED) rather than queue
#: them behind streams that may never end.
MAX_RPC_WORKERS = 32

#: WatchEvents streams open at once, so streams can never take every worker thread and
#: starve the unary calls (stats, quotas) that operators need most when things go wrong.
MAX_EVENT_WATCHERS = 16

#: Events queued per WatchEvents stream. A reader slower than the event rate loses the
#: oldest ones (counted in Event.dropped) instead of growing the daemon's memory.
EVENT_QUEUE_DEPTH = 1024

#: Bindings in one Launch: primitive_lang.limits.MAX_PARAMS (= PXOS_MAX_BINDINGS).
MAX_BINDINGS = 32

#: Kinds and VM ids in one WatchEvents filter.
MAX_EVENT_FILTERS = 64
