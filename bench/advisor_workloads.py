"""A labelled set of workloads for the advisor's quality benchmark (bench/bench_advisor.py).

Each runs for real in its own VM of a NumPy Hypervisor (no class header, no priority:
the classifier infers), so the figures the advisor summarises are measured, not made
up. The label says who waits on the work, which is what the classes mean
(docs/scheduling.md): INTERACTIVE, a person or a request waits on each launch;
THROUGHPUT, a steady stream where the rate matters more than any one launch; BATCH,
offline work that finishes whenever. Kernels are the examples' (examples/primitives) at
fixed shapes, plus a few written here. Some labels are not recoverable from the figures
alone (a large launch someone waits on; tiny launches of an overnight job): there the
operator's description is the only signal, which is the case for asking a model at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.hv_load import install

ATTENTION = """GPU_KERNEL attention
GPU_PARAM q float[8, 128, 64]
GPU_PARAM k float[8, 128, 64]
GPU_PARAM v float[8, 128, 64]
GPU_PARAM out float[8, 128, 64]
GPU_THREAD_CODE:
    TRANSPOSE k -> kt
    PARALLEL_MATMUL q kt -> scores
    MUL scores 0.125 -> scores
    SOFTMAX scores axis=-1 -> probs
    PARALLEL_MATMUL probs v -> out
GPU_END
"""
MLP_HEAD = """GPU_KERNEL mlp_head
GPU_PARAM x float[4, 256]
GPU_PARAM w float[256, 128]
GPU_PARAM b1 float[128]
GPU_PARAM w2 float[128, 10]
GPU_PARAM probs float[4, 10]
GPU_THREAD_CODE:
    PARALLEL_MATMUL x w -> h
    ADD h b1 -> h
    RELU h -> h
    PARALLEL_MATMUL h w2 -> logits
    SOFTMAX logits -> probs
GPU_END
"""
MATMUL = """GPU_KERNEL matmul
GPU_PARAM a float[512, 1024]
GPU_PARAM w float[1024, 256]
GPU_PARAM c float[512, 256]
GPU_THREAD_CODE:
    PARALLEL_MATMUL a w -> c
GPU_END
"""
SGD = """GPU_KERNEL sgd_linear
GPU_PARAM x float[1024, 64]
GPU_PARAM y float[1024, 1]
GPU_PARAM w float[64, 1]
GPU_THREAD_CODE:
    TRANSPOSE x -> xt
    REPEAT 100:
        PARALLEL_MATMUL x w -> pred
        SUB pred y -> err
        PARALLEL_MATMUL xt err -> grad
        MUL grad 0.001 -> grad
        SUB w grad -> w
    END_REPEAT
GPU_END
"""
ROW_STATS = """GPU_KERNEL row_stats
GPU_PARAM x float[1024, 512]
GPU_PARAM sums float[1024]
GPU_PARAM norms float[1024]
GPU_THREAD_CODE:
    REDUCE_SUM x axis=1 -> sums
    MUL x x -> squares
    REDUCE_SUM squares axis=1 -> norms
    SQRT norms -> norms
GPU_END
"""
SMOOTH = """GPU_KERNEL smooth
GPU_PARAM signal float[65536]
GPU_PARAM out float[65536]
GPU_THREAD_CODE:
    COPY signal -> s
    REPEAT 8:
        MUL s 0.5 -> s
        ADD s signal -> s
    END_REPEAT
    COPY s -> out
GPU_END
"""
TINY = """GPU_KERNEL tiny
GPU_PARAM a float[16]
GPU_PARAM b float[16]
GPU_PARAM c float[16]
GPU_THREAD_CODE:
    ADD a b -> c
GPU_END
"""


@dataclass(frozen=True)
class Workload:
    name: str
    label: str  # INTERACTIVE | THROUGHPUT | BATCH
    source: str
    pattern: str  # "serial": one launch, wait, think; "saturate": keep DEPTH launches in flight
    think_s: float
    description: str


DEPTH = 8

WORKLOADS = [
    Workload("chat_reply", "INTERACTIVE", MLP_HEAD, "serial", 0.02,
             "chat assistant: a user waits for each reply"),
    Workload("attention_api", "INTERACTIVE", ATTENTION, "serial", 0.03,
             "online inference behind a web API with a 50 ms latency target"),
    Workload("notebook", "INTERACTIVE", MATMUL, "serial", 0.05,
             "an analyst's notebook: each cell waits for its result"),
    Workload("small_serial_nodesc", "INTERACTIVE", MLP_HEAD, "serial", 0.02, ""),
    Workload("video_filter", "THROUGHPUT", SMOOTH, "saturate", 0.0,
             "video filter on a live stream: frames per second is what counts"),
    Workload("log_stats", "THROUGHPUT", ROW_STATS, "saturate", 0.0,
             "streaming analytics: statistics over incoming log batches all day"),
    Workload("feature_stream", "THROUGHPUT", ATTENTION, "saturate", 0.0,
             "feature extraction for a message queue, steady rate"),
    Workload("training", "BATCH", SGD, "saturate", 0.0, "nightly fine-tuning of a model"),
    Workload("embeddings", "BATCH", MATMUL, "saturate", 0.0,
             "offline embedding computation over a whole dataset"),
    Workload("overnight_prep", "BATCH", TINY, "saturate", 0.0,
             "bulk preprocessing of a dataset, run overnight, nobody waits"),
    Workload("big_saturate_nodesc", "BATCH", MATMUL, "saturate", 0.0, ""),
    Workload("training_nodesc", "BATCH", SGD, "saturate", 0.0, ""),
]


def run_workload(hv, vm_id: int, w: Workload, seconds: float) -> int:
    """Run ``w`` in VM ``vm_id`` for about ``seconds``; -> launches made."""
    kid, binds = install(hv, vm_id, w.source)
    n, end = 0, time.perf_counter() + seconds
    if w.pattern == "serial":
        while time.perf_counter() < end:
            hv.launch(vm_id, kid, binds).wait(60)
            n += 1
            time.sleep(w.think_s)
        return n
    inflight = []
    while time.perf_counter() < end:
        if len(inflight) >= DEPTH:
            inflight.pop(0).wait(60)
        inflight.append(hv.launch(vm_id, kid, binds))
        n += 1
    for c in inflight:
        c.wait(60)
    return n
