"""``compile_source``: bytes or text → ``CompiledProgram``, through a cache keyed by sha256.

The pipeline: size and encoding checks, parse (parser.py, blocks.py), validation
(validate.py). Every problem of the source is collected and raised together as one
``PrimitiveError``. Results, rejections included, are kept in an LRU of
``limits.COMPILE_CACHE_SIZE`` entries: the same source sent again costs a hash and a lookup,
and the objects handed out are immutable, so sharing them is safe.

``compile_source(source, run=...)`` lets the caller do the work of a cache miss elsewhere
(the hypervisor runs it in a worker process): ``run(data, key)`` gets the checked UTF-8
bytes and their sha256 and returns what ``compile_uncached`` would; an exception it raises
passes through and nothing is cached. Cache hits never call it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

from . import limits
from .compiled import CompiledProgram
from .errors import Code, Diagnostic, PrimitiveError, sort_diagnostics
from .parser import parse
from .validate import validate

_cache: OrderedDict[str, CompiledProgram | tuple[Diagnostic, ...]] = OrderedDict()
_weights: dict[str, int] = {}  # statements (or diagnostics) each cached entry holds
_cache_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0, "statements": 0}

#: What a compile produces: the program, or the diagnostics that reject the source.
Result = CompiledProgram | tuple[Diagnostic, ...]


def _weight(entry: CompiledProgram | tuple[Diagnostic, ...]) -> int:
    """What an entry costs the host, in statements: a compiled program holds an AST node,
    a step and a shape record per statement (about 1-3 KiB each), a rejection its
    diagnostics."""
    if isinstance(entry, CompiledProgram):
        return max(1, sum(k.statement_count + len(k.params) for k in entry.kernels))
    return max(1, len(entry))


def compile_source(source: str | bytes, *, run: Callable[[bytes, str], Result] | None = None) -> CompiledProgram:
    """Parse and validate a whole source; raises PrimitiveError listing every problem.
    ``run``: does a cache miss's work instead of ``compile_uncached`` (module docstring)."""
    if isinstance(source, str):
        if len(source) > limits.MAX_SOURCE_BYTES:  # each character is at least one byte
            raise PrimitiveError([_too_big(len(source.encode("utf-8", "surrogatepass")))])
        try:
            data = source.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PrimitiveError([_position_diag(source, exc.start, "the source holds a lone surrogate "
                                                 f"U+{ord(source[exc.start]):04X}, which UTF-8 cannot encode")]) from None
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        raise TypeError(f"source must be str or bytes, not {type(source).__name__}")
    if len(data) > limits.MAX_SOURCE_BYTES:
        raise PrimitiveError([_too_big(len(data))])
    key = hashlib.sha256(data).hexdigest()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            _stats["hits"] += 1
    if hit is None:
        hit = (run or compile_uncached)(data, key)
        with _cache_lock:
            _stats["misses"] += 1
            if key not in _cache:
                _weights[key] = _weight(hit)
                _stats["statements"] += _weights[key]
            _cache[key] = hit
            # Bounded by count and by size: guests of every VM share this cache, so one of
            # them compiling many large sources must not grow the daemon without limit.
            while len(_cache) > limits.COMPILE_CACHE_SIZE or (
                    _stats["statements"] > limits.COMPILE_CACHE_STATEMENTS and len(_cache) > 1):
                old, _ = _cache.popitem(last=False)
                _stats["statements"] -= _weights.pop(old)
    if isinstance(hit, CompiledProgram):
        return hit
    raise PrimitiveError(hit)


def cache_info() -> dict[str, int]:
    with _cache_lock:
        return {**_stats, "size": len(_cache), "max_size": limits.COMPILE_CACHE_SIZE,
                "max_statements": limits.COMPILE_CACHE_STATEMENTS}


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _weights.clear()
        _stats.update(hits=0, misses=0, statements=0)


def _too_big(n: int) -> Diagnostic:
    return Diagnostic(Code.LIMIT, 1, 1, f"the source is {n} bytes (at most {limits.MAX_SOURCE_BYTES})")


def _position_diag(text: str, at: int, message: str) -> Diagnostic:
    line = text.count("\n", 0, at) + 1
    return Diagnostic(Code.ENCODING, line, at - (text.rfind("\n", 0, at) + 1) + 1, message)


def compile_uncached(data: bytes, key: str) -> Result:
    """The work of a cache miss: ``data`` (at most MAX_SOURCE_BYTES) parsed and validated,
    ``key`` its sha256 in hex. Returns the program or the diagnostics; caches nothing."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[:exc.start].decode("utf-8")
        return (_position_diag(good + "?", len(good), f"the source is not UTF-8: byte 0x{data[exc.start]:02x} "
                               "cannot start or continue a character here"),)
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark is not part of the program
    parsed = parse(text)
    diags = list(parsed.diagnostics)
    kernels = validate(parsed.kernels, diags)
    if diags:
        diags = list(sort_diagnostics(diags))
        if len(diags) > limits.MAX_DIAGNOSTICS:
            rest = len(diags) - limits.MAX_DIAGNOSTICS
            last = diags[limits.MAX_DIAGNOSTICS - 1]
            diags = diags[:limits.MAX_DIAGNOSTICS]
            diags.append(Diagnostic(Code.LIMIT, last.line, last.column, f"{rest} more problems not listed"))
        return tuple(diags)
    return CompiledProgram(key, tuple(kernels))
