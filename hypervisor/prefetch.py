"""How far ahead to prefetch, adapted to what the last launches saw (docs/memory.md,
"The adaptive rule").

Two exponential moving averages, updated after each launch that needed anything from
host memory: the byte hit rate (what was already on the device or on its way because of
a prefetch) and the stall fraction (stall / (stall + device time)). Too many stalls and
misses widen the look-ahead and the bytes allowed in flight; a prefetched buffer evicted
unused narrows them.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.2  # EMA weight of the newest launch
STALL_WIDEN = 0.02  # stall fraction above which prefetch is too late
HIT_WIDEN = 0.98  # byte hit rate below which prefetch is too little
MAX_DEPTH = 32
MIN_DEPTH = 1
MIN_BUDGET = 1 << 20


@dataclass
class PrefetchState:
    depth: int
    budget: int  # host->device bytes allowed in flight
    max_budget: int
    hit_ema: float = 1.0
    stall_ema: float = 0.0
    seen_wasted: int = 0  # MemoryManager.wasted_prefetches at the last adjustment
    widened: int = 0
    narrowed: int = 0
    enabled: bool = True  # [memory] prefetch = false turns it off (demand paging only)

    @classmethod
    def initial(cls, depth: int, pool_bytes: int, enabled: bool = True) -> PrefetchState:
        return cls(depth=max(MIN_DEPTH, min(depth, MAX_DEPTH)),
                   budget=max(MIN_BUDGET, pool_bytes // 4), max_budget=max(MIN_BUDGET, pool_bytes // 2),
                   enabled=enabled)

    def observe(self, hit_bytes: int, miss_bytes: int, stall_s: float, device_s: float, wasted_total: int,
                covered: int | None = None) -> None:
        """After one launch. ``covered``: how many of the look-ahead's launches the last
        prefetch could bring in (room, not depth, limits prefetch beyond that). Launches
        that touched nothing from host memory tell nothing and leave the averages alone."""
        total = hit_bytes + miss_bytes
        if total == 0 and stall_s == 0.0:
            return
        self.hit_ema += ALPHA * ((hit_bytes / total if total else 1.0) - self.hit_ema)
        busy = stall_s + device_s
        self.stall_ema += ALPHA * ((stall_s / busy if busy > 0 else 0.0) - self.stall_ema)
        late = miss_bytes > 0 or stall_s > 0.0
        room_limited = covered is not None and covered < self.depth
        if late and self.stall_ema > STALL_WIDEN and self.hit_ema < HIT_WIDEN and not room_limited:
            if self.depth < MAX_DEPTH or self.budget < self.max_budget:
                self.depth = min(self.depth + 1, MAX_DEPTH)
                self.budget = min(int(self.budget * 1.25), self.max_budget)
                self.widened += 1
        elif wasted_total > self.seen_wasted or (covered is not None and self.depth > covered + 2):
            # A prefetch thrown away unused, or a look-ahead deeper than the room it has.
            self.depth = max(self.depth - 1, MIN_DEPTH)
            self.budget = max(int(self.budget * 0.8), MIN_BUDGET)
            self.narrowed += 1
        self.seen_wasted = wasted_total
