/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pxos_lib.h - thin wrappers over the /dev/pxosN ioctls for the `pxos` tool, plus
 * tensor types ("float[4,3]"), value conversion and error reporting. Every wrapper
 * returns 0 or -errno and leaves the device's status and message in *res.
 */
#ifndef PXOS_LIB_H
#define PXOS_LIB_H

#include <stddef.h>
#include <stdint.h>
#include <linux/types.h>

#include "pxos_gpu.h"

struct px_type {
	uint32_t dtype;          /* enum pxos_dtype */
	uint32_t rank;           /* 0: a scalar */
	uint64_t dims[PXOS_MAX_RANK];
};

/*
 * px_open: the module's device ($PXOS_DEVICE or /dev/pxos0), or the DRM transport over the
 * stock virtio_gpu driver's render node ($PXOS_DRM_DEVICE or /dev/dri/renderD128), as
 * px_transport or $PXOS_TRANSPORT say ("module", "drm"; "auto", the default: the module's
 * device if it exists, else a render node offering the pxOS capset). -errno on failure.
 * Every wrapper below works on either; close with px_close_device, wait for submits with px_poll.
 */
extern const char *px_transport;
int px_open(void);
void px_close_device(int fd);
int px_poll(int fd, int timeout_ms);  /* 1: a submitted launch finished, 0: none in time */
const char *px_status_name(uint32_t status);
const char *px_dtype_name(uint32_t dtype);
size_t px_dtype_size(uint32_t dtype);
uint64_t px_count(const struct px_type *t);
/* "float32[4, 3]" or "int"; *end points after what was parsed. */
int px_parse_type(const char *s, struct px_type *t, const char **end);
void px_format_type(const struct px_type *t, char *buf, size_t n);
/* Values as doubles <-> the dtype's bytes. */
void px_encode(uint32_t dtype, const double *v, void *out, uint64_t n);
void px_decode(uint32_t dtype, const void *in, double *v, uint64_t n);
/* "pxos: <what>: <strerror> [STATUS: message]" on stderr. */
void px_report(const char *what, int err, const struct pxos_ioc_result *res);

int px_info(int fd, struct pxos_ioc_info *info);
int px_alloc(int fd, const struct px_type *t, uint64_t *handle, struct pxos_ioc_result *res);
int px_free(int fd, uint64_t handle, struct pxos_ioc_result *res);
int px_write(int fd, uint64_t handle, uint64_t offset, const void *buf, uint64_t len,
	     struct pxos_ioc_result *res);
int px_read(int fd, uint64_t handle, uint64_t offset, void *buf, uint64_t len,
	    struct pxos_ioc_result *res);
/* A buffer of type t holding values v (n = px_count(t)); NULL v leaves it as allocated. */
int px_tensor(int fd, const struct px_type *t, const double *v, uint64_t *handle,
	      struct pxos_ioc_result *res);
int px_compile(int fd, const char *src, size_t len, struct pxos_ioc_compile *out);
uint64_t px_kernel_id(const struct pxos_ioc_compile *c, const char *name);
int px_kernel_info(int fd, uint64_t id, struct pxos_ioc_kernel_info *out);
void px_bind_buffer(struct pxos_binding *b, const char *name, uint64_t handle);
void px_bind_f64(struct pxos_binding *b, const char *name, uint32_t dtype, double v);
/* timeout_ms 0: the driver's default. */
int px_launch(int fd, uint64_t kernel, const struct pxos_binding *b, uint32_t n,
	      uint32_t timeout_ms, struct pxos_ioc_launch *out);
int px_submit(int fd, uint64_t kernel, const struct pxos_binding *b, uint32_t n, uint64_t *token,
	      struct pxos_ioc_result *res);
int px_reap(int fd, uint64_t token, int wait, struct pxos_ioc_reap *out);
int px_stats(int fd, struct pxos_ioc_stats *out);
int px_idle_hint(int fd, int idle, struct pxos_ioc_result *res);
char *px_read_file(const char *path, size_t *len);
uint64_t px_now_ns(void);

#endif /* PXOS_LIB_H */
