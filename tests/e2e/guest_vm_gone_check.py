"""Runs inside a guest, not on the host (test_guest_vm_removed.py): the guest Python library
keeps asking its device for work until the operator removes the VM, then must get VMGone
(PXOS_S_VM_GONE) at once. Prints PY-READY once working, then PY-GONE and the message; exit 3
on VMGone, 1 on anything else.

    python guest_vm_gone_check.py GUEST_DRIVER_PYTHON_DIR
"""

from __future__ import annotations

import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
import pxos_guest as px

SOURCE = "GPU_KERNEL k\nGPU_PARAM a float[N]\nGPU_PARAM b float[N]\nGPU_THREAD_CODE:\n    TANH a -> b\nGPU_END\n"

with px.Device() as dev:
    a = dev.upload(np.ones(256, np.float32))
    b = dev.alloc(np.float32, (256,))
    k = dev.compile(SOURCE)["k"]
    print("PY-READY", flush=True)
    last_ok = time.monotonic()
    try:
        while True:
            dev.launch(k, a=a, b=b)
            last_ok = time.monotonic()
            time.sleep(0.01)
    except px.VMGone as e:
        print(f"PY-GONE after {time.monotonic() - last_ok:.3f} s: {e}", flush=True)
        sys.exit(3)
    except px.PxosDeviceError as e:
        print(f"PY-OTHER {e}", flush=True)
        sys.exit(1)
