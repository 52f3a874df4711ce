"""Runs inside a guest, not on the host: what Mesa (the host's, through the chroot) does
with the pxOS virtio-gpu device, as any GL/EGL program would start: open the render node
through GBM, initialise EGL on it, make a GLES context current and ask who renders.
Prints MESA lines; test_guest_stock_driver.py checks it fell back to software cleanly.

    python guest_mesa_probe.py [RENDER_NODE]
"""

from __future__ import annotations

import ctypes as C
import os
import sys

EGL_PLATFORM_GBM_MESA, EGL_VENDOR, EGL_VERSION = 0x31D7, 0x3053, 0x3054
EGL_OPENGL_ES_API, EGL_CONTEXT_CLIENT_VERSION, EGL_NONE = 0x30A0, 0x3098, 0x3038
GL_VENDOR, GL_RENDERER = 0x1F00, 0x1F01


def main() -> int:
    node = sys.argv[1] if len(sys.argv) > 1 else "/dev/dri/renderD128"
    gbm = C.CDLL("libgbm.so.1")
    gbm.gbm_create_device.restype = C.c_void_p
    gbm.gbm_device_get_backend_name.restype = C.c_char_p
    gbm.gbm_device_get_backend_name.argtypes = [C.c_void_p]
    dev = gbm.gbm_create_device(os.open(node, os.O_RDWR))
    print(f"MESA gbm_device {'yes' if dev else 'none'}", flush=True)
    if not dev:
        return 0
    egl = C.CDLL("libEGL.so.1")
    egl.eglGetPlatformDisplay.restype = C.c_void_p
    egl.eglGetPlatformDisplay.argtypes = [C.c_uint, C.c_void_p, C.c_void_p]
    egl.eglInitialize.argtypes = [C.c_void_p, C.POINTER(C.c_int), C.POINTER(C.c_int)]
    egl.eglQueryString.restype = C.c_char_p
    egl.eglQueryString.argtypes = [C.c_void_p, C.c_int]
    egl.eglCreateContext.restype = C.c_void_p
    egl.eglCreateContext.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p, C.POINTER(C.c_int)]
    egl.eglMakeCurrent.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p]
    display = egl.eglGetPlatformDisplay(EGL_PLATFORM_GBM_MESA, dev, None)
    major, minor = C.c_int(), C.c_int()
    if not egl.eglInitialize(display, C.byref(major), C.byref(minor)):
        print("MESA egl none", flush=True)
        return 0
    print(f"MESA egl {egl.eglQueryString(display, EGL_VENDOR).decode()} "
          f"{egl.eglQueryString(display, EGL_VERSION).decode()}", flush=True)
    egl.eglBindAPI(EGL_OPENGL_ES_API)
    attribs = (C.c_int * 3)(EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE)
    ctx = egl.eglCreateContext(display, None, None, attribs)  # EGL_KHR_no_config_context
    if not ctx or not egl.eglMakeCurrent(display, None, None, ctx):  # surfaceless
        print("MESA context none", flush=True)
        return 0
    gles = C.CDLL("libGLESv2.so.2")
    gles.glGetString.restype = C.c_char_p
    print(f"MESA renderer {gles.glGetString(GL_VENDOR).decode()} | {gles.glGetString(GL_RENDERER).decode()}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
