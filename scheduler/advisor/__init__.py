"""The scheduling advisor's pure half: VM summaries -> prompt and schema, a model's answer
-> validated advice (or typed rejections), the heuristic (``none``) advisor, the breaker.

No threads and no I/O here; hypervisor/advisor.py runs the worker, talks HTTP and applies
advice. docs/advisor.md and docs/scheduling.md ("LLM advisor") say what the model sees and
what it may change.
"""

from scheduler.advisor.advice import (
    MAX_ANSWER_CHARS,
    Advice,
    AdvisorRejected,
    Reason,
    Rejection,
    parse_answer,
)
from scheduler.advisor.breaker import CircuitBreaker
from scheduler.advisor.heuristic import heuristic_advice, heuristic_class
from scheduler.advisor.summary import (
    MAX_DESCRIPTION_CHARS,
    MAX_VMS_PER_REQUEST,
    VMSummary,
    answer_schema,
    build_messages,
)

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_VMS_PER_REQUEST",
    "Advice",
    "AdvisorRejected",
    "CircuitBreaker",
    "Reason",
    "Rejection",
    "VMSummary",
    "answer_schema",
    "build_messages",
    "heuristic_advice",
    "heuristic_class",
    "parse_answer",
]
