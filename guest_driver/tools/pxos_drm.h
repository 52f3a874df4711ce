/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pxos_drm.h - the `pxos` tool's DRM transport (pxos_drm.c, pxos_drm_ioc.c): the /dev/pxosN
 * ioctls served over the stock virtio_gpu driver's render node. px_open() picks it
 * (--transport drm, $PXOS_TRANSPORT, or automatically when /dev/pxos0 is absent).
 */
#ifndef PXOS_DRM_H
#define PXOS_DRM_H

#include <stddef.h>
#include <stdint.h>
#include <linux/types.h>

#include "pxos_gpu.h"

#define PXD_RENDER_NODE "/dev/dri/renderD128"

int pxd_probe(const char *path);                     /* 1: a render node offering the pxOS capset */
int pxd_open(const char *path);                      /* the fd (one per process), or -errno */
int pxd_is(int fd);
void pxd_close(int fd);
int pxd_ioctl(int fd, unsigned long cmd, void *arg); /* a PXOS_IOC_*: 0 or the module's -errno */
int pxd_poll(int timeout_ms);                        /* 1: a submit finished, 0: none in time */

/* Internal to pxos_drm*.c. */
#define PXD_SMALL 8192                 /* the largest fixed response: KERNEL_INFO, 4856 bytes */
#define PXD_SLOT 256                   /* one LAUNCH reply (200 bytes) per slot */

struct pxd_bo { __u32 handle, res, size; unsigned char *map; };
struct pxd_pending { int fence; unsigned int slot; __u64 token; };

struct pxd_state {
	int fd;
	struct pxd_bo small, slots, big, data;  /* data: WRITE's bytes, mapped (no copy into the submit) */
	struct pxd_bo launch;                   /* a blocking LAUNCH's reply */
	unsigned int free_slots[PXOS_MAX_SUBMITTED], nfree;
	struct pxd_pending sub[PXOS_MAX_SUBMITTED];
	unsigned int nsub;
	__u64 next_token, requests_total, requests_failed, bytes_written, bytes_read;
	__u32 session;
};
extern struct pxd_state pxd;

int pxd_bo_new(struct pxd_bo *bo, __u32 size);
void pxd_bo_free(struct pxd_bo *bo);
int pxd_send(const void *head, size_t hlen, const void *data, size_t dlen, struct pxd_bo *bo, __u32 off,
	     const struct pxd_bo *data_bo, int *fence);
int pxd_wait(int fence, int timeout_ms);
int pxd_wait_bo(const struct pxd_bo *bo, __u64 deadline_ns);
int pxd_result(const struct pxd_bo *bo, __u32 off, struct pxos_ioc_result *res);
int pxd_call(const void *head, size_t hlen, const void *data, size_t dlen, size_t need,
	     struct pxos_ioc_result *res, const unsigned char **reply);
int pxd_call_data(const void *head, size_t hlen, const void *data, size_t dlen, const struct pxd_bo *data_bo,
		  size_t need, struct pxos_ioc_result *res, const unsigned char **reply);
int pxd_info(struct pxos_ioc_info *io);

#define PXD_HDR(cmd, t) do { memset(&(cmd), 0, sizeof(cmd)); (cmd).hdr.type = (t); } while (0)

#endif /* PXOS_DRM_H */
