// SPDX-License-Identifier: Apache-2.0
/*
 * pxos_drm.c - the DRM transport of the `pxos` tool: the /dev/pxosN ioctls done in user
 * space over Linux's own virtio_gpu driver (docs/protocol.md section 11), so the tool runs
 * on a guest without pxos_gpu.ko. Each ioctl becomes the wire request the module would
 * send (pxos_gpu.h), behind a struct pxos_drm_submit, sent with
 * DRM_IOCTL_VIRTGPU_EXECBUFFER; the reply lands in a mapped 3D buffer resource before the
 * submit's fence (a sync_file fd) signals. The errno of each failure is the module's.
 * One DRM session per process (the tool opens one); the render node's file is the session.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pxos_drm.h"
#include "pxos_lib.h"

/* The virtio_gpu DRM uapi (include/uapi/drm/virtgpu_drm.h), the parts used here. */
struct pxd_map { __u64 offset; __u32 handle, pad; };
struct pxd_execbuffer {
	__u32 flags, size;
	__u64 command, bo_handles;
	__u32 num_bo_handles;
	__s32 fence_fd;
	__u32 ring_idx, pad;
};
struct pxd_resource_create {
	__u32 target, format, bind, width, height, depth, array_size, last_level, nr_samples, flags;
	__u32 bo_handle, res_handle, size, stride;
};
struct pxd_get_caps { __u32 cap_set_id, cap_set_ver; __u64 addr; __u32 size, pad; };
struct pxd_gem_close { __u32 handle, pad; };
struct pxd_wait_bo { __u32 handle, flags; };
#define PXD_IOCTL_MAP _IOWR('d', 0x41, struct pxd_map)
#define PXD_IOCTL_EXECBUFFER _IOWR('d', 0x42, struct pxd_execbuffer)
#define PXD_IOCTL_RESOURCE_CREATE _IOWR('d', 0x44, struct pxd_resource_create)
#define PXD_IOCTL_WAIT _IOWR('d', 0x48, struct pxd_wait_bo)
#define PXD_IOCTL_GET_CAPS _IOWR('d', 0x49, struct pxd_get_caps)
#define PXD_IOCTL_GEM_CLOSE _IOW('d', 0x09, struct pxd_gem_close)
#define PXD_EXECBUF_FENCE_FD_OUT 0x02
#define PXD_WAIT_NOWAIT 0x01
_Static_assert(sizeof(struct pxd_execbuffer) == 40, "drm_virtgpu_execbuffer");
_Static_assert(sizeof(struct pxd_resource_create) == 56, "drm_virtgpu_resource_create");

struct pxd_state pxd = { .fd = -1 };

static int pxd_ioctl_raw(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) < 0 ? -errno : 0;
}

static int pxd_capset(int fd)
{
	struct pxos_capset cs = { 0 };
	struct pxd_get_caps g = { PXOS_CAPSET_ID, PXOS_CAPSET_VERSION, (__u64)(uintptr_t)&cs, sizeof(cs), 0 };
	int err = pxd_ioctl_raw(fd, PXD_IOCTL_GET_CAPS, &g);

	if (err)
		return -ENODEV;
	if (cs.magic != PXOS_MAGIC)
		return -ENODEV;
	return cs.abi_major == PXOS_ABI_MAJOR ? 0 : -EPROTO;
}

int pxd_probe(const char *path)
{
	int fd = open(path, O_RDWR | O_CLOEXEC), ok;

	if (fd < 0)
		return 0;
	ok = pxd_capset(fd) == 0;
	close(fd);
	return ok;
}

int pxd_bo_new(struct pxd_bo *bo, __u32 size)
{
	struct pxd_resource_create rc = { 0 };
	struct pxd_map m = { 0 };
	int err;

	size = (size + 4095) & ~4095u;
	rc.format = 64;                /* R8_UNORM; target 0 = PIPE_BUFFER */
	rc.width = rc.size = size;
	rc.height = rc.depth = rc.array_size = 1;
	err = pxd_ioctl_raw(pxd.fd, PXD_IOCTL_RESOURCE_CREATE, &rc);
	if (err)
		return err;
	bo->handle = rc.bo_handle;
	bo->res = rc.res_handle;
	bo->size = size;
	m.handle = rc.bo_handle;
	err = pxd_ioctl_raw(pxd.fd, PXD_IOCTL_MAP, &m);
	if (!err) {
		bo->map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, pxd.fd, (off_t)m.offset);
		if (bo->map == MAP_FAILED)
			err = -errno;
	}
	if (err) {
		struct pxd_gem_close c = { bo->handle, 0 };

		pxd_ioctl_raw(pxd.fd, PXD_IOCTL_GEM_CLOSE, &c);
		memset(bo, 0, sizeof(*bo));
	}
	return err;
}

void pxd_bo_free(struct pxd_bo *bo)
{
	struct pxd_gem_close c = { bo->handle, 0 };

	if (!bo->map)
		return;
	munmap(bo->map, bo->size);
	pxd_ioctl_raw(pxd.fd, PXD_IOCTL_GEM_CLOSE, &c);
	memset(bo, 0, sizeof(*bo));
}

int pxd_open(const char *path)
{
	int err;

	if (pxd.fd >= 0)
		return -EBUSY;
	pxd.fd = open(path, O_RDWR | O_CLOEXEC);
	if (pxd.fd < 0)
		return -errno;
	err = pxd_capset(pxd.fd);
	if (!err)
		err = pxd_bo_new(&pxd.small, PXD_SMALL);
	if (!err)
		err = pxd_bo_new(&pxd.slots, PXOS_MAX_SUBMITTED * PXD_SLOT);
	if (err) {
		pxd_close(pxd.fd);
		return err;
	}
	for (unsigned int i = 0; i < PXOS_MAX_SUBMITTED; i++)
		pxd.free_slots[i] = PXOS_MAX_SUBMITTED - 1 - i;
	pxd.nfree = PXOS_MAX_SUBMITTED;
	return pxd.fd;
}

int pxd_is(int fd)
{
	return fd >= 0 && fd == pxd.fd;
}

void pxd_close(int fd)
{
	if (!pxd_is(fd))
		return;
	for (unsigned int i = 0; i < pxd.nsub; i++)
		close(pxd.sub[i].fence);
	pxd_bo_free(&pxd.small);
	pxd_bo_free(&pxd.slots);
	pxd_bo_free(&pxd.big);
	pxd_bo_free(&pxd.data);
	pxd_bo_free(&pxd.launch);
	close(pxd.fd);              /* the context goes: the device closes the session */
	memset(&pxd, 0, sizeof(pxd));
	pxd.fd = -1;
}

/* Send one request (head, then data) with its reply at bo + off, WRITE data in data_bo
 * (NULL: none, or inline); *fence: its sync_file (fence NULL: none, wait on bo instead). */
int pxd_send(const void *head, size_t hlen, const void *data, size_t dlen, struct pxd_bo *bo,
		    __u32 off, const struct pxd_bo *data_bo, int *fence)
{
	__u32 handles[2] = { bo->handle, data_bo ? data_bo->handle : 0 };
	size_t total = sizeof(struct pxos_drm_submit) + hlen + dlen;
	struct pxos_drm_submit *env = malloc(total);
	struct pxd_execbuffer eb = { 0 };
	int err;

	if (!env)
		return -ENOMEM;
	env->magic = PXOS_MAGIC;
	env->abi_major = PXOS_ABI_MAJOR;
	env->abi_minor = PXOS_ABI_MINOR;
	env->reply_resource = bo->res;
	env->data_resource = data_bo ? data_bo->res : 0;
	env->reply_offset = off;
	env->data_offset = 0;
	memcpy(env + 1, head, hlen);
	if (dlen)
		memcpy((char *)(env + 1) + hlen, data, dlen);
	memset(bo->map + off, 0, sizeof(struct pxos_resp_hdr)); /* untouched after: no reply came */
	eb.flags = fence ? PXD_EXECBUF_FENCE_FD_OUT : 0;
	eb.size = (__u32)total;
	eb.command = (__u64)(uintptr_t)env;
	eb.bo_handles = (__u64)(uintptr_t)handles;  /* held by the kernel until the fence */
	eb.num_bo_handles = data_bo ? 2 : 1;
	eb.fence_fd = -1;
	err = pxd_ioctl_raw(pxd.fd, PXD_IOCTL_EXECBUFFER, &eb);
	free(env);
	if (err)
		return err;
	pxd.requests_total++;
	if (fence)
		*fence = eb.fence_fd;
	return 0;
}

/* 0 once every fence on bo signalled (a submit's reply is there), -ETIMEDOUT past
 * deadline_ns (CLOCK_MONOTONIC), or -errno: VIRTGPU_WAIT, no sync_file to make. The
 * kernel's wait gives up after 15 s (EBUSY); closer to the deadline it is polled. */
int pxd_wait_bo(const struct pxd_bo *bo, __u64 deadline_ns)
{
	for (;;) {
		__u64 now = px_now_ns();
		struct pxd_wait_bo w = { bo->handle, 0 };
		int err;

		if (deadline_ns <= now || deadline_ns - now < 16000000000ull)
			w.flags = PXD_WAIT_NOWAIT;  /* the kernel's own wait could overshoot */
		err = pxd_ioctl_raw(pxd.fd, PXD_IOCTL_WAIT, &w);
		if (err != -EBUSY && err != -EINTR && err != -ERESTART)
			return err;
		if (px_now_ns() >= deadline_ns)
			return -ETIMEDOUT;
		if (w.flags)
			usleep(200);
	}
}

/* 1 when the fence signalled within timeout_ms (-1: wait for ever). */
int pxd_wait(int fence, int timeout_ms)
{
	struct pollfd p = { .fd = fence, .events = POLLIN };
	int n;

	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	return n == 1;
}

static int pxd_status_errno(__u32 status)
{
	static const int map[] = { 0, EINVAL, ENOENT, EDQUOT, ENOMEM, EBADMSG, EINVAL, EIO, ECANCELED,
				   EBUSY, E2BIG, EOPNOTSUPP, EIO, EEXIST, ERANGE, EROFS, ENODEV };

	return status < sizeof(map) / sizeof(map[0]) ? -map[status] : -EIO;
}

/* The outcome of a finished request, as the module's pxos_req_result gives it. */
int pxd_result(const struct pxd_bo *bo, __u32 off, struct pxos_ioc_result *res)
{
	const struct pxos_resp_hdr *r = (const void *)(bo->map + off);

	if (r->hdr.type != PXOS_RESP) {
		pxd.requests_failed++;
		if (res)
			snprintf(res->message, sizeof(res->message), "no reply: the device refused the submit");
		return -EPROTO;
	}
	pxd.session = r->hdr.ctx_id;
	if (res) {
		res->status = r->status;
		memcpy(res->message, r->message, sizeof(res->message));
		res->message[sizeof(res->message) - 1] = '\0';
	}
	if (r->status)
		pxd.requests_failed++;
	return pxd_status_errno(r->status);
}

/* A request answered in pxd.small (or pxd.big when the reply needs more): *reply on return. */
int pxd_call(const void *head, size_t hlen, const void *data, size_t dlen, size_t need,
		    struct pxos_ioc_result *res, const unsigned char **reply)
{
	return pxd_call_data(head, hlen, data, dlen, NULL, need, res, reply);
}

int pxd_call_data(const void *head, size_t hlen, const void *data, size_t dlen, const struct pxd_bo *data_bo,
		  size_t need, struct pxos_ioc_result *res, const unsigned char **reply)
{
	struct pxd_bo *bo = &pxd.small;
	int err;

	if (need > PXD_SMALL) {
		if (pxd.big.size < need) {
			pxd_bo_free(&pxd.big);
			err = pxd_bo_new(&pxd.big, (__u32)need);
			if (err)
				return err;
		}
		bo = &pxd.big;
	}
	err = pxd_send(head, hlen, data, dlen, bo, 0, data_bo, NULL);
	if (err)
		return err;
	err = pxd_wait_bo(bo, UINT64_MAX);
	if (err)
		return err;
	if (reply)
		*reply = bo->map;
	return pxd_result(bo, 0, res);
}

int pxd_info(struct pxos_ioc_info *io)
{
	struct pxos_cmd_get_info cmd;
	const unsigned char *p;
	const struct pxos_resp_info *r;
	int err;

	PXD_HDR(cmd, PXOS_CMD_GET_INFO);
	cmd.abi_major = PXOS_ABI_MAJOR;
	cmd.abi_minor = PXOS_ABI_MINOR;
	err = pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(*r), &io->res, &p);
	if (err)
		return err;
	r = (const void *)p;
	io->ioctl_version = PXOS_IOCTL_VERSION;
	io->session_id = pxd.session;
	io->abi_major = r->abi_major;
	io->abi_minor = r->abi_minor;
	io->vm_id = r->vm_id;
	io->memory_quota = r->memory_quota;
	io->memory_used = r->memory_used;
	io->compute_share_pct = r->compute_share_pct;
	io->compute_cap_pct = r->compute_cap_pct;
	io->max_rank = r->max_rank;
	io->max_bindings = r->max_bindings;
	io->max_source_bytes = r->max_source_bytes;
	io->max_name = r->max_name;
	io->max_transfer_bytes = r->max_transfer_bytes;
	io->max_buffer_bytes = r->max_buffer_bytes;
	io->max_inflight = r->max_inflight;
	io->max_kernels = r->max_kernels;
	memcpy(io->backend, r->backend, sizeof(io->backend));
	io->backend[sizeof(io->backend) - 1] = '\0';
	memcpy(io->device_name, r->device_name, sizeof(io->device_name));
	io->device_name[sizeof(io->device_name) - 1] = '\0';
	return 0;
}
