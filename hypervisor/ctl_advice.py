"""pxosctl advice: the scheduling advisor's view and an operator's decisions (docs/advisor.md).

    pxosctl advice [--json]          every VM: its advice, source, age, rationale, status
    pxosctl advice accept VM         suggest mode: apply the LLM's advice (as `quota set` would)
    pxosctl advice reject VM         suggest mode: keep things as they are; the heuristic stands
"""

from __future__ import annotations

from .ctl_format import message_json, print_json, table
from .rpc import pxos_pb2 as pb


def add_parser(sub, common, vm_id_type) -> None:
    adv = sub.add_parser("advice", parents=[common], help="the scheduling advisor's advice per VM")
    verbs = adv.add_subparsers(dest="advice_command", required=False)
    verbs.add_parser("show", parents=[common], help="every VM's advice (the default)")
    for verb, what in (("accept", "apply the LLM's advice for a VM (suggest mode)"),
                       ("reject", "reject the LLM's advice for a VM (suggest mode)")):
        v = verbs.add_parser(verb, parents=[common], help=what)
        v.add_argument("vm", type=vm_id_type)


def _age(row) -> str:
    if not row.HasField("age_seconds"):
        return "-"
    s = row.age_seconds
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def _rows(rows) -> list[list[str]]:
    return [[str(r.vm_id), r.source, r.wclass, f"{r.share:g}%" if r.HasField("share") else "-",
             f"{r.cap:g}%" if r.HasField("cap") else "-",
             r.heuristic_class, r.llm_class or "-", _age(r), r.status,
             (f"{r.detail}" if r.status in ("refused", "dwelling") and r.detail else r.rationale) or "-"]
            for r in rows]


_HEADERS = ["VM", "SOURCE", "CLASS", "SHARE", "CAP", "HEURISTIC", "LLM", "AGE", "STATUS", "RATIONALE / WHY"]


def _json(resp) -> dict:
    out = message_json(resp)
    out["agreement"] = resp.agreement if resp.HasField("agreement") else None
    return out


def cmd_advice(c, args) -> int:
    verb = args.advice_command or "show"
    if verb == "show":
        resp = c.call("GetAdvice", pb.AdviceRequest())
        if args.json:
            print_json(_json(resp))
            return 0
        agree = f"{100 * resp.agreement:.0f}%" if resp.HasField("agreement") else "-"
        reqs = ", ".join(f"{k} {v}" for k, v in sorted(resp.requests.items()) if v) or "none"
        print(f"advisor: {resp.mode}" + (f" ({resp.model} at {resp.endpoint}), breaker {resp.breaker}"
                                         if resp.mode != "off" else ""))
        print(f"requests: {reqs}; applied {resp.applied}; refused "
              + (", ".join(f"{k} {v}" for k, v in sorted(resp.rejected.items()) if v) or "none")
              + f"; agreement with the heuristic {agree}")
        if resp.last_error:
            print(f"last error: {resp.last_error}")
        print(table(_HEADERS, _rows(resp.rows), left=len(_HEADERS)))
        return 0
    row = c.call("DecideAdvice", pb.DecideAdviceRequest(vm_id=args.vm, accept=verb == "accept"))
    if args.json:
        print_json(message_json(row))
    else:
        share = (f", share {row.share:g}%" if row.HasField("share") else "") + (
            f", cap {row.cap:g}%" if row.HasField("cap") else "")
        print(f"VM {row.vm_id}: {row.status}: {row.wclass}{share} ({row.source}): {row.rationale or '-'}")
    return 0
