"""pxosctl's text output: sizes, percentages, tables, and messages as plain dicts for --json."""

from __future__ import annotations

import json
import sys

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(n: int | float) -> str:
    """4096 -> '4.0KiB', 8_000_000_000 -> '7.5GiB' (binary units: what memory is made of)."""
    n = float(n)
    for unit in _BINARY_UNITS:
        if abs(n) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """The first ``left`` columns (ids, names) left-aligned, the rest (figures)
    right-aligned; two spaces between columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def message_json(message) -> dict:
    """A message as JSON-ready data: field names as in the proto, every field present
    (scripts find every key), integers as numbers, unset optional fields as null."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            vfield = field.message_type.fields_by_name["value"]
            out[field.name] = {k: (message_json(v) if vfield.message_type else v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [message_json(v) if field.message_type else v for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        elif field.message_type is not None:
            out[field.name] = message_json(value)
        else:
            out[field.name] = value
    return out


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=None, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
