"""What the advisor tells a model about each VM: a compact, bounded summary, and the prompt.

Pure: the hypervisor gathers the figures (hypervisor/advisor.py) and hands them here as
``VMSummary`` values; this module turns them into chat messages and the JSON schema the
answer must follow. Every free-text field is cut to a named cap, so neither a long VM
description nor many VMs can blow up the prompt (docs/scheduling.md, "LLM advisor").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from scheduler.workload import WorkloadClass

#: An operator's description is cut to this many characters in the prompt.
MAX_DESCRIPTION_CHARS = 200
#: At most this many VMs go into one request (the rest wait for the next round).
MAX_VMS_PER_REQUEST = 16
#: At most this many distinct ops are listed in a VM's op mix (the most frequent).
MAX_OPS_LISTED = 6
#: A rationale longer than this is cut (it is shown to operators and put in events).
MAX_RATIONALE_CHARS = 200
#: The schema asks for rationales of at most this many characters: a grammar-constrained
#: model stops there, so an answer about one VM stays near 100 tokens (a small model writes
#: digits one token each) and a bounded max_tokens does not cut the JSON short.
SCHEMA_RATIONALE_CHARS = 80


@dataclass(frozen=True, slots=True)
class VMSummary:
    """One VM as the model sees it. Rates and durations are over the last interval."""

    vm_id: int
    name: str
    current_class: str  # the class most of its recent launches got
    share_pct: float
    cap_pct: float | None
    share_min: float  # the operator's bounds on what the advisor may set
    share_max: float
    launches_per_s: float = 0.0
    mean_launch_ms: float = 0.0  # measured device time per launch
    flops_per_launch: float = 0.0
    bytes_per_launch: float = 0.0
    latency_p99_ms: float = 0.0  # submit -> completion, queue wait included
    queue_wait_p99_ms: float = 0.0  # submit -> start on the device
    device_busy_pct: float = 0.0  # its device seconds per wall second, percent
    memory_device_mb: float = 0.0
    memory_host_mb: float = 0.0  # spilled to host RAM (residency misses cost a transfer)
    residency_misses: int = 0
    idle: bool = False
    op_mix: dict[str, int] = field(default_factory=dict)  # op name -> launches using it
    description: str = ""
    cap_min: float | None = None  # the operator's bounds on the cap; None: the cap may not move
    cap_max: float | None = None

    @property
    def share_may_move(self) -> bool:
        return self.share_min < self.share_max

    @property
    def cap_may_move(self) -> bool:
        return self.cap_min is not None and self.cap_max is not None

    def compact(self) -> dict:
        d = asdict(self)
        d["description"] = self.description[:MAX_DESCRIPTION_CHARS]
        top = sorted(self.op_mix.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_OPS_LISTED]
        d["op_mix"] = dict(top)
        for k, v in list(d.items()):
            if isinstance(v, float):
                d[k] = round(v, 3)
        # the model reads fewer tokens without the empty fields
        return {k: v for k, v in d.items() if v not in ("", {}, None)}


CLASS_NAMES = [c.name for c in WorkloadClass if c is not WorkloadClass.REALTIME]

SYSTEM_PROMPT = (
    "You advise a GPU scheduler. For each VM choose a workload class: INTERACTIVE (a person "
    "or a request waits on each launch; the device is mostly idle), THROUGHPUT (a steady "
    "stream where the rate matters), BATCH (offline work such as training; it keeps the "
    "device busy and nobody waits). The description is the operator's own words about the "
    "VM; device_busy_pct is how much of the time the VM keeps the device busy."
)
SHARE_SENTENCE = " Optionally suggest a share (percent) within [share_min, share_max]."
CAP_SENTENCE = " Optionally suggest a cap (percent) within [cap_min, cap_max], not below the share."
CLOSING = " Give a short rationale in words. Answer JSON only."


def system_prompt(allow_share: bool, allow_cap: bool) -> str:
    return SYSTEM_PROMPT + (SHARE_SENTENCE if allow_share else "") + (CAP_SENTENCE if allow_cap else "") + CLOSING


def answer_schema(vm_ids: list[int], *, allow_share: bool = True, allow_cap: bool = False) -> dict:
    """The JSON schema of an answer about ``vm_ids`` (grammar-constrained on llama.cpp).
    ``allow_share`` / ``allow_cap`` False: no VM of the request may have its share / cap
    changed, so the answer has no such field at all (nothing for a model to get out of bounds)."""
    props = {
        "vm_id": {"type": "integer", "enum": sorted(vm_ids)},
        "wclass": {"type": "string", "enum": CLASS_NAMES},
        "share": {"type": "number"},
        "cap": {"type": "number"},
        "rationale": {"type": "string", "maxLength": SCHEMA_RATIONALE_CHARS},
    }
    if not allow_share:
        del props["share"]
    if not allow_cap:
        del props["cap"]
    return {
        "type": "object",
        "properties": {
            "vms": {
                "type": "array",
                "minItems": 1,
                "maxItems": len(set(vm_ids)),
                "items": {"type": "object", "properties": props, "required": ["vm_id", "wclass", "rationale"]},
            },
        },
        "required": ["vms"],
    }


def build_messages(summaries: list[VMSummary]) -> list[dict]:
    """Chat messages for one request: the system prompt and one line of JSON per VM (share
    bounds only where the operator lets the share move)."""
    lines = []
    for s in summaries[:MAX_VMS_PER_REQUEST]:
        d = s.compact()
        if not s.share_may_move:
            d.pop("share_min", None)
            d.pop("share_max", None)
        lines.append(json.dumps(d, separators=(",", ":"), sort_keys=True))
    prompt = system_prompt(any(s.share_may_move for s in summaries), any(s.cap_may_move for s in summaries))
    return [{"role": "system", "content": prompt},
            {"role": "user", "content": "VMs:\n" + "\n".join(lines)}]
