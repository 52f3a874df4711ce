"""``python -m primitive_lang check``: the command-line contract of docs/language.md ("Checking
from the command line"). Others script against it: keep the output forms and exit codes stable.

    check [--json] [--bind NAME=TYPE[DIMS] ...] FILE...      (FILE "-" reads stdin)

Text: ``FILE: ok: kernel NAME: N statements[, F flops, B bytes]`` per kernel and
``FILE:LINE:COL: error[CODE]: message`` per problem. ``--json``: one JSON object per file, one
per line. Exit 0 when every file is valid, 1 when any problem was found, 2 on usage errors
(bad arguments, a file that cannot be read).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .ast import DType
from .compiled import CheckedKernel
from .compiler import compile_source
from .errors import Diagnostic, PrimitiveError
from .shapes import TensorSpec

_DTYPES = {"float": DType.FLOAT32, "int": DType.INT32, **{d.value: d for d in DType}}
_BIND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([a-z0-9]+)(?:\[([0-9,\s]*)\])?")


def parse_bind(text: str) -> tuple[str, TensorSpec]:
    """``a=float32[64,128]`` → ("a", TensorSpec(float32, (64, 128))); ``alpha=float`` → shape ()."""
    m = _BIND.fullmatch(text.strip())
    if not m or m.group(2) not in _DTYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=TYPE or NAME=TYPE[DIMS] "
                                         "(e.g. a=float32[64,128], alpha=float)")
    dims = m.group(3)
    shape = tuple(int(d) for d in dims.split(",")) if dims and dims.strip() else ()
    return m.group(1), TensorSpec(_DTYPES[m.group(2)], shape)


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m primitive_lang", description="pxOS primitive language tools")
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="parse and validate primitive sources; print kernels and cost")
    check.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    check.add_argument("--bind", action="append", type=parse_bind, default=[], metavar="NAME=TYPE[DIMS]",
                       help="bind a param for the cost figures, e.g. a=float32[64,128] or alpha=float")
    check.add_argument("files", nargs="+", metavar="FILE", help="source files; - reads stdin")
    return p


def main(argv: Sequence[str] | None = None, stdin=None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    parser = _arg_parser()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage (or the help)
        return 0 if exc.code == 0 else 2
    binds: dict[str, TensorSpec] = {}
    for name, spec in args.bind:
        if name in binds:
            print(f"{parser.prog} check: error: --bind {name} given twice", file=stderr)
            return 2
        binds[name] = spec
    status, used = 0, set()
    for path in args.files:
        try:
            data = _read(path, stdin)
        except OSError as exc:
            print(f"{path}: error: cannot read: {exc.strerror or exc}", file=stderr)
            if args.json:
                _emit_json(stdout, path, [], [Diagnostic("io", 0, 0, f"cannot read: {exc.strerror or exc}")])
            status = 2
            continue
        kernels, errors = _check(data, binds, used)
        if errors and status == 0:
            status = 1
        if args.json:
            _emit_json(stdout, path, kernels, errors)
        else:
            _emit_text(stdout, path, kernels, errors)
    for name in binds.keys() - used:
        print(f"warning: --bind {name} matches no param of any kernel", file=stderr)
    return status


def _read(path: str, stdin) -> bytes:
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return stream.read()
    with open(path, "rb") as f:
        return f.read()


def _check(data: bytes, binds: dict[str, TensorSpec], used: set[str]) -> tuple[list[dict], list[Diagnostic]]:
    try:
        program = compile_source(data)
    except PrimitiveError as exc:
        return [], list(exc.diagnostics)
    kernels, errors = [], []
    for k in program.kernels:
        used.update(p.name for p in k.params if p.name in binds)
        entry, kernel_errors = _kernel_entry(k, binds)
        kernels.append(entry)
        errors.extend(kernel_errors)
    return kernels, errors


def _kernel_entry(k: CheckedKernel, binds: dict[str, TensorSpec]) -> tuple[dict[str, Any], list[Diagnostic]]:
    declared = {p.name: TensorSpec(p.type.dtype, p.type.shape) for p in k.params
                if p.type.shape is not None and all(isinstance(d, int) for d in p.type.shape)}
    specs = {p.name: binds.get(p.name) or declared.get(p.name) for p in k.params}
    bound, errors = None, []
    if all(specs.values()):
        try:
            bound = k.bind(specs)
        except PrimitiveError as exc:
            errors = list(exc.diagnostics)
    cost = bound.cost if bound else None
    entry = {
        "name": k.name,
        "params": [{"name": p.name, "dtype": p.type.dtype.value,
                    "shape": None if p.type.shape is None else list(p.type.shape),
                    "direction": k.directions[p.name].value,
                    "bound_shape": list(bound.shapes[p.name].shape) if bound else None} for p in k.params],
        "class_hint": k.class_hint.value if k.class_hint else None,
        "priority": k.priority,
        "statements": k.statement_count,
        "executed_statements": k.executed_statement_count,
        "flops": cost.flops if cost else None,
        "bytes": cost.bytes_total if cost else None,
        "bytes_read": cost.bytes_read if cost else None,
        "bytes_written": cost.bytes_written if cost else None,
        "peak_temp_bytes": cost.peak_temp_bytes if cost else None,
        "arithmetic_intensity": cost.arithmetic_intensity if cost else None,
        "ok": not errors,
    }
    return entry, errors


def _emit_text(out: TextIO, path: str, kernels: list[dict], errors: list[Diagnostic]) -> None:
    for k in kernels:
        if not k["ok"]:
            continue
        line = f"{path}: ok: kernel {k['name']}: {k['statements']} statements"
        if k["flops"] is not None:
            line += f", {k['flops']} flops, {k['bytes']} bytes"
        print(line, file=out)
    for d in errors:
        print(f"{path}:{d.line}:{d.column}: error[{d.code}]: {d.message}", file=out)


def _emit_json(out: TextIO, path: str, kernels: list[dict], errors: list[Diagnostic]) -> None:
    doc = {"file": path, "kernels": kernels,
           "errors": [{"code": d.code, "line": d.line, "column": d.column, "message": d.message} for d in errors]}
    print(json.dumps(doc), file=out)
