"""A model's answer turned into advice, or rejected with a typed reason.

Pure: ``parse_answer`` takes the answer's text and the summaries it answers, validates
it with pydantic against ``answer_schema`` and the operator's bounds, and returns the
advice it accepts and a rejection (with its ``Reason``) for everything else. Nothing a
model writes can raise out of here or name a VM it was not asked about.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scheduler.advisor.summary import MAX_RATIONALE_CHARS, MAX_VMS_PER_REQUEST, VMSummary
from scheduler.workload import WorkloadClass

#: An answer longer than this is refused before it is parsed (a model that rambles, or an
#: endpoint that streams garbage, must not make the daemon hold megabytes).
MAX_ANSWER_CHARS = 64 * 1024


class Reason(StrEnum):
    """Why a request or a piece of advice was not taken (a metric label; docs/metrics.md)."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"  # refused, reset, dropped before a full answer
    HTTP_STATUS = "http_status"  # the endpoint answered with an error status
    INVALID_JSON = "invalid_json"  # not JSON, or not the schema's shape
    UNKNOWN_VM = "unknown_vm"
    OUT_OF_BOUNDS = "out_of_bounds"  # a share or cap outside the operator's bounds
    STALE = "stale"  # the VM changed (or the answer came too late) since it was asked
    BREAKER_OPEN = "breaker_open"  # not asked: the circuit breaker is open


class AdvisorRejected(Exception):
    """A whole answer refused; ``reason`` says why."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail = reason, detail


class _VMAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)
    vm_id: int
    wclass: str
    share: float | None = None
    cap: float | None = None
    rationale: str = Field(default="", max_length=4 * MAX_RATIONALE_CHARS)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    vms: list[_VMAnswer] = Field(max_length=4 * MAX_VMS_PER_REQUEST)


@dataclass(frozen=True, slots=True)
class Advice:
    """What the advisor proposes for one VM; ``share`` / ``cap`` None leave them alone."""

    vm_id: int
    wclass: WorkloadClass
    share: float | None
    rationale: str
    source: str  # "llm" or "heuristic"
    cap: float | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    vm_id: int | None
    reason: Reason
    detail: str


def parse_answer(text: str, summaries: list[VMSummary]) -> tuple[list[Advice], list[Rejection]]:
    """-> (accepted advice, rejections). Raises AdvisorRejected when the answer as a whole
    is unusable (not JSON, wrong shape)."""
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
        raise AdvisorRejected(Reason.INVALID_JSON, f"answer is not text of at most {MAX_ANSWER_CHARS} chars")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise AdvisorRejected(Reason.INVALID_JSON, f"not JSON: {exc}") from None
    try:
        answer = _Answer.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdvisorRejected(Reason.INVALID_JSON, f"not the schema's shape at {where}: {first['msg']}") from None
    by_id = {s.vm_id: s for s in summaries}
    accepted: dict[int, Advice] = {}
    rejected: list[Rejection] = []
    for item in answer.vms:
        s = by_id.get(item.vm_id)
        if s is None:
            rejected.append(Rejection(item.vm_id, Reason.UNKNOWN_VM, f"VM {item.vm_id} was not asked about"))
            continue
        try:
            wclass = WorkloadClass.from_name(item.wclass)
        except Exception:
            rejected.append(Rejection(item.vm_id, Reason.INVALID_JSON, f"unknown class {item.wclass[:32]!r}"))
            continue
        if wclass is WorkloadClass.REALTIME:  # only an operator or a guest's hint asks for it
            rejected.append(Rejection(item.vm_id, Reason.OUT_OF_BOUNDS, "REALTIME is never advised"))
            continue
        share = item.share
        if share is not None:
            if not math.isfinite(share) or not s.share_min <= share <= s.share_max:
                rejected.append(Rejection(item.vm_id, Reason.OUT_OF_BOUNDS,
                                          f"share {share!r} outside [{s.share_min:g}, {s.share_max:g}]"))
                continue
            if share == s.share_pct:
                share = None
        cap = item.cap
        if cap is not None:
            if not s.cap_may_move or not math.isfinite(cap) or not s.cap_min <= cap <= s.cap_max:
                rejected.append(Rejection(item.vm_id, Reason.OUT_OF_BOUNDS,
                                          f"cap {cap!r} outside [{s.cap_min}, {s.cap_max}]"))
                continue
            if cap < (s.share_pct if share is None else share):
                rejected.append(Rejection(item.vm_id, Reason.OUT_OF_BOUNDS, f"cap {cap:g} below the share"))
                continue
            if cap == s.cap_pct:
                cap = None
        if item.vm_id in accepted:  # the first answer about a VM counts
            continue
        # printed on operators' terminals and put in events: no control characters
        rationale = "".join(ch for ch in " ".join(item.rationale.split()) if ch.isprintable())[:MAX_RATIONALE_CHARS]
        accepted[item.vm_id] = Advice(item.vm_id, wclass, share, rationale, "llm", cap)
    return list(accepted.values()), rejected
