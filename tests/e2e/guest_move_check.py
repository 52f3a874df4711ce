"""Runs inside a guest, not on the host (test_guest_vm_move.py): the guest Python library
keeps launching and reading back while the operator moves its VM between devices. Every
result must equal the first one bit for bit, a buffer written once must keep its bytes,
and no request may fail; the longest gap between two completed iterations is the pause
the guest saw. Prints MOVE-READY once working, MOVE-DONE with the figures; exit 0 when
all held, 1 otherwise.

    python guest_move_check.py GUEST_DRIVER_PYTHON_DIR SECONDS
"""

from __future__ import annotations

import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
import pxos_guest as px

SOURCE = ("GPU_KERNEL k\nGPU_PARAM a float[N]\nGPU_PARAM b float[N]\nGPU_THREAD_CODE:\n"
          "    TANH a -> t\n    MUL t a -> b\nGPU_END\n")

rng = np.random.default_rng(16)
x = rng.standard_normal(1 << 16).astype(np.float32)
kept_data = rng.standard_normal(1 << 18).astype(np.float32)  # 1 MiB written once
with px.Device() as dev:
    a = dev.upload(x)
    b = dev.alloc(np.float32, x.shape)
    kept = dev.upload(kept_data)
    k = dev.compile(SOURCE)["k"]
    dev.launch(k, a=a, b=b)
    first = b.read().tobytes()
    print("MOVE-READY", flush=True)
    iterations = mismatches = 0
    gap = 0.0
    last = start = time.monotonic()
    try:
        while time.monotonic() - start < float(sys.argv[2]):
            dev.launch(k, a=a, b=b)
            mismatches += b.read().tobytes() != first
            mismatches += kept.read().tobytes() != kept_data.tobytes()
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            iterations += 1
    except px.PxosDeviceError as e:
        print(f"MOVE-ERROR after {iterations} iterations: {e}", flush=True)
        sys.exit(1)
    print(f"MOVE-DONE iterations {iterations} mismatches {mismatches} max_gap {gap:.3f}", flush=True)
    sys.exit(0 if mismatches == 0 and iterations > 0 else 1)
