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
    device_busy_pct: float = 0.0  # its device seconds per wall second, percent
    memory_device_mb: float = 0.0
    memory_host_mb: float = 0.0  # spilled to host RAM (residency misses cost a transfer)
    residency_misses: int = 0
    idle: bool = False
    op_mix: dict[str, int] = field(default_factory=dict)  # op name -> launches using it
    description: str = ""

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
    "VM; device_busy_pct is how much of the time the VM keeps the device busy. Optionally "
    "suggest a share (percent) within [share_min, share_max]. Give a short rationale in "
    "words. Answer JSON only."
)


SYSTEM_PROMPT_CLASS_ONLY = SYSTEM_PROMPT.replace(
    " Optionally suggest a share (percent) within [share_min, share_max].", "")


def answer_schema(vm_ids: list[int], *, allow_share: bool = True) -> dict:
    """The JSON schema of an answer about ``vm_ids`` (grammar-constrained on llama.cpp).
    ``allow_share`` False: no VM of the request may have its share changed, so the answer
    has no share field at all (nothing for a model to get out of bounds)."""
    props = {
        "vm_id": {"type": "integer", "enum": sorted(vm_ids)},
        "wclass": {"type": "string", "enum": CLASS_NAMES},
        "share": {"type": "number"},
        "rationale": {"type": "string", "maxLength": SCHEMA_RATIONALE_CHARS},
    }
    if not allow_share:
        del props["share"]
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
        if s.share_min == s.share_max:
            d.pop("share_min", None)
            d.pop("share_max", None)
        lines.append(json.dumps(d, separators=(",", ":"), sort_keys=True))
    prompt = SYSTEM_PROMPT if any(s.share_min < s.share_max for s in summaries) else SYSTEM_PROMPT_CLASS_ONLY
    return [{"role": "system", "content": prompt},
            {"role": "user", "content": "VMs:\n" + "\n".join(lines)}]
