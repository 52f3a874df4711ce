"""pxosctl model: load, list and remove the models shared read-only by every VM.

    pxosctl model add NAME FILE [--dtype float32|float16]
    pxosctl model list
    pxosctl model remove NAME
"""

from __future__ import annotations

import json
import os

from .ctl_format import message_json, print_json, size, table
from .rpc import pxos_pb2 as pb


def add_parser(sub, common) -> None:
    model = sub.add_parser("model", help="load, list and remove shared models").add_subparsers(
        dest="model_command", required=True)
    add = model.add_parser("add", parents=[common], help="load a GGUF file as a shared read-only model")
    add.add_argument("name", help="the name guests open it by")
    add.add_argument("file", help="GGUF file (read by pxos-hvd, so a path on the daemon's host)")
    add.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                     help="element type of its tensors on the device (default float32)")
    model.add_parser("list", parents=[common], help="loaded models, their memory and users")
    rm = model.add_parser("remove", parents=[common], help="unload a model no VM has open")
    rm.add_argument("name")


def _row(m) -> list[str]:
    return [m.name, m.architecture, m.dtype, str(m.tensors), size(m.bytes), size(m.device_bytes),
            size(m.host_bytes), ",".join(map(str, m.users)) or "-", str(m.opens)]


_HEADERS = ["NAME", "ARCH", "DTYPE", "TENSORS", "BYTES", "ON_DEVICE", "HOST_ONLY", "VMS", "OPENS"]


def _json(m) -> dict:
    out = message_json(m)
    out["config"] = json.loads(out.pop("config_json", "") or "{}")
    return out


def cmd_model(c, args) -> int:
    if args.model_command == "add":
        info = c.call("LoadModel", pb.LoadModelRequest(name=args.name, path=os.path.abspath(args.file),
                                                       dtype=args.dtype), timeout=max(args.timeout, 600.0))
        if args.json:
            print_json(_json(info))
        else:
            print(f"model {info.name} loaded: {info.tensors} tensors, {size(info.bytes)} "
                  f"in {info.load_seconds:.1f} s")
            print(table(_HEADERS, [_row(info)], left=2))
    elif args.model_command == "list":
        resp = c.call("ListModels", pb.ListModelsRequest())
        if args.json:
            print_json({"models": [_json(m) for m in resp.models]})
        else:
            print(table(_HEADERS, [_row(m) for m in resp.models], left=2))
    elif args.model_command == "remove":
        c.call("RemoveModel", pb.ModelRef(name=args.name))
        if args.json:
            print_json({"name": args.name, "removed": True})
        else:
            print(f"model {args.name} removed")
    return 0
