// SPDX-License-Identifier: Apache-2.0
/*
 * pxos_drm_ioc.c - each /dev/pxosN ioctl over the DRM transport (pxos_drm.c): the same
 * checks before sending, the same wire request, the same results and errnos as the
 * module's pxos_ioctl.c and pxos_launch.c. A blocking LAUNCH waits on its reply resource;
 * each SUBMIT gets a reply slot of its own in one mapped resource and is completed when
 * its fence fd (a sync_file) signals.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pxos_drm.h"
#include "pxos_lib.h"

static size_t pxd_dtype_size(__u32 dtype)
{
	switch (dtype) {
	case PXOS_DTYPE_FLOAT16: return 2;
	case PXOS_DTYPE_FLOAT32: case PXOS_DTYPE_INT32: return 4;
	case PXOS_DTYPE_FLOAT64: case PXOS_DTYPE_INT64: return 8;
	default: return 0;
	}
}

static int pxd_alloc(struct pxos_ioc_alloc *io)
{
	struct pxos_cmd_alloc cmd;
	const unsigned char *p;
	size_t nbytes = pxd_dtype_size(io->dtype);
	int err;

	if (!nbytes || io->rank > PXOS_MAX_RANK)
		return -EINVAL;
	for (unsigned int i = 0; i < PXOS_MAX_RANK; i++) {
		if (i >= io->rank ? io->dims[i] != 0 : io->dims[i] == 0)
			return -EINVAL;
		if (i < io->rank && __builtin_mul_overflow(nbytes, (size_t)io->dims[i], &nbytes))
			return -E2BIG;
	}
	if (nbytes > PXOS_MAX_BUFFER_BYTES)
		return -E2BIG;
	PXD_HDR(cmd, PXOS_CMD_ALLOC);
	cmd.dtype = io->dtype;
	cmd.rank = io->rank;
	memcpy(cmd.dims, io->dims, sizeof(cmd.dims));
	err = pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(struct pxos_resp_alloc), &io->res, &p);
	if (!err) {
		io->handle = ((const struct pxos_resp_alloc *)p)->handle;
		io->nbytes = ((const struct pxos_resp_alloc *)p)->nbytes;
	}
	return err;
}

static int pxd_simple(__u32 type, __u64 id, struct pxos_ioc_result *res)
{
	struct pxos_cmd_free cmd; /* the layout of struct pxos_cmd_kernel and _model_close too */

	PXD_HDR(cmd, type);
	cmd.handle = id;
	return pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(struct pxos_resp_hdr), res, NULL);
}

static int pxd_transfer(struct pxos_ioc_transfer *io, int write)
{
	struct pxos_cmd_transfer cmd;
	const unsigned char *p;
	unsigned char *ubuf = (unsigned char *)(uintptr_t)io->user_ptr;
	__u64 end;
	int err;

	io->done = 0;
	if (!io->length || io->length > PXOS_MAX_BUFFER_BYTES)
		return io->length ? -E2BIG : -EINVAL;
	if (__builtin_add_overflow(io->offset, io->length, &end) || end > PXOS_MAX_BUFFER_BYTES)
		return -EINVAL;
	while (io->done < io->length) {
		__u64 n = io->length - io->done;

		if (n > PXOS_MAX_TRANSFER_BYTES)
			n = PXOS_MAX_TRANSFER_BYTES;
		PXD_HDR(cmd, write ? PXOS_CMD_WRITE : PXOS_CMD_READ);
		cmd.handle = io->handle;
		cmd.offset = io->offset + io->done;
		cmd.length = n;
		if (write) {
			/* The data goes into a mapped resource the device reads: one copy in the guest. */
			if (pxd.data.size < n) {
				pxd_bo_free(&pxd.data);
				err = pxd_bo_new(&pxd.data, (__u32)n);
				if (err)
					return err;
			}
			memcpy(pxd.data.map, ubuf + io->done, n);
			err = pxd_call_data(&cmd, sizeof(cmd), NULL, 0, &pxd.data, sizeof(struct pxos_resp_hdr),
					    &io->res, NULL);
		} else {
			err = pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(struct pxos_resp_hdr) + n, &io->res, &p);
			if (!err && ((const struct pxos_resp_hdr *)p)->payload_len != n)
				err = -EPROTO;  /* every byte asked for, or nothing */
			if (!err)
				memcpy(ubuf + io->done, p + sizeof(struct pxos_resp_hdr), n);
		}
		if (err)
			return err;
		io->done += n;
		if (write)
			pxd.bytes_written += n;
		else
			pxd.bytes_read += n;
	}
	return 0;
}

static int pxd_compile(struct pxos_ioc_compile *io)
{
	struct pxos_cmd_compile cmd;
	const struct pxos_resp_compile *r;
	const unsigned char *p;
	int err;

	if (!io->source_len || io->source_len > PXOS_MAX_SOURCE_BYTES)
		return io->source_len ? -E2BIG : -EINVAL;
	io->nkernels = io->ndiags = 0;
	memset(io->kernels, 0, sizeof(io->kernels));
	memset(io->diags, 0, sizeof(io->diags));
	PXD_HDR(cmd, PXOS_CMD_COMPILE);
	cmd.source_len = io->source_len;
	err = pxd_call(&cmd, sizeof(cmd), (const void *)(uintptr_t)io->source_ptr, io->source_len,
		       sizeof(*r), &io->res, &p);
	if (err && err != -EBADMSG)
		return err;
	r = (const void *)p;  /* success: the kernels; a rejected program: its diagnostics */
	io->nkernels = r->nkernels < PXOS_MAX_KERNELS ? r->nkernels : PXOS_MAX_KERNELS;
	io->ndiags = r->ndiags < PXOS_MAX_DIAGS ? r->ndiags : PXOS_MAX_DIAGS;
	memcpy(io->kernels, r->kernels, sizeof(io->kernels));
	memcpy(io->diags, r->diags, sizeof(io->diags));
	return err;
}

static int pxd_kernel_info(struct pxos_ioc_kernel_info *io)
{
	struct pxos_cmd_kernel cmd;
	const struct pxos_resp_kernel_info *r;
	const unsigned char *p;
	int err;

	PXD_HDR(cmd, PXOS_CMD_KERNEL_INFO);
	cmd.kernel_id = io->kernel_id;
	err = pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(*r), &io->res, &p);
	if (err)
		return err;
	r = (const void *)p;
	io->nparams = r->nparams;
	io->class_hint = r->class_hint;
	io->priority = r->priority;
	io->nstatements = r->nstatements;
	memcpy(io->name, r->name, sizeof(io->name));
	memcpy(io->params, r->params, sizeof(io->params));
	return 0;
}

static int pxd_binding_ok(const struct pxos_binding *b)
{
	size_t len = strnlen(b->name, PXOS_MAX_NAME);

	if (len == 0 || len == PXOS_MAX_NAME)
		return 0;
	if (b->kind == PXOS_BIND_BUFFER)
		return b->dtype == 0 && b->value != 0;
	if (b->kind == PXOS_BIND_SCALAR_F64 || b->kind == PXOS_BIND_SCALAR_I64)
		return b->dtype >= PXOS_DTYPE_FLOAT16 && b->dtype <= PXOS_DTYPE_INT64;
	return 0;
}

/* The module's checks of a LAUNCH/SUBMIT, and its wire struct. */
static int pxd_launch_cmd(const struct pxos_ioc_launch *io, struct pxos_cmd_launch *cmd)
{
	const struct pxos_binding *b = (const void *)(uintptr_t)io->bindings_ptr;

	if (io->nbindings > PXOS_MAX_BINDINGS)
		return -E2BIG;
	if ((io->priority > 100 && io->priority != PXOS_PRIORITY_DEFAULT) || io->class_hint > PXOS_CLASS_BATCH ||
	    io->timeout_ms > PXOS_LAUNCH_TIMEOUT_MAX_MS)
		return -EINVAL;
	for (unsigned int i = 0; i < io->nbindings; i++)
		if (!pxd_binding_ok(&b[i]))
			return -EINVAL;
	PXD_HDR(*cmd, PXOS_CMD_LAUNCH);
	cmd->kernel_id = io->kernel_id;
	cmd->nbindings = io->nbindings;
	cmd->priority = io->priority;
	cmd->class_hint = io->class_hint;
	return 0;
}

static int pxd_launch_send(const struct pxos_ioc_launch *io, struct pxd_pending *out)
{
	const struct pxos_binding *b = (const void *)(uintptr_t)io->bindings_ptr;
	struct pxos_cmd_launch cmd;
	int err = pxd_launch_cmd(io, &cmd);

	if (err)
		return err;
	if (!pxd.nfree)
		return -EBUSY;
	out->slot = pxd.free_slots[--pxd.nfree];
	err = pxd_send(&cmd, sizeof(cmd), b, io->nbindings * sizeof(*b), &pxd.slots, out->slot * PXD_SLOT,
		       NULL, &out->fence);
	if (err)
		pxd.free_slots[pxd.nfree++] = out->slot;
	return err;
}

/* A finished launch's outcome into the caller's fields; a slot's fence closed, slot freed. */
static int pxd_launch_done(const struct pxd_pending *pl, const struct pxd_bo *bo, struct pxos_ioc_result *res,
			   __u64 *launch_id, __u64 *device_ns, __u64 *queue_ns, __u64 *total_ns,
			   __u32 *class_assigned)
{
	const struct pxos_resp_launch *r = (const void *)(bo->map + pl->slot * PXD_SLOT);
	int err = pxd_result(bo, pl->slot * PXD_SLOT, res);

	if (err != -EPROTO) {  /* a failed launch still reports its id and timings */
		*launch_id = r->launch_id;
		*device_ns = r->device_ns;
		*queue_ns = r->queue_ns;
		*total_ns = r->total_ns;
		*class_assigned = r->class_assigned;
	}
	if (pl->fence >= 0) {
		close(pl->fence);
		pxd.free_slots[pxd.nfree++] = pl->slot;
	}
	return err;
}

/* A blocking LAUNCH: its reply in a resource of its own, waited for with VIRTGPU_WAIT
 * (no sync_file per launch). Timed out, that resource is let go with the launch: the
 * kernel keeps its pages until the fence, and the next LAUNCH makes a new one. */
static int pxd_launch(struct pxos_ioc_launch *io)
{
	const struct pxos_binding *b = (const void *)(uintptr_t)io->bindings_ptr;
	__u32 ms = io->timeout_ms ? io->timeout_ms : PXOS_LAUNCH_TIMEOUT_DEFAULT_MS;
	struct pxos_cmd_launch cmd;
	struct pxd_pending pl;
	int err = pxd_launch_cmd(io, &cmd);

	if (err)
		return err;
	if (!pxd.launch.map && (err = pxd_bo_new(&pxd.launch, 4096)))
		return err;
	err = pxd_send(&cmd, sizeof(cmd), b, io->nbindings * sizeof(*b), &pxd.launch, 0, NULL, NULL);
	if (!err)
		err = pxd_wait_bo(&pxd.launch, px_now_ns() + (__u64)ms * 1000000);
	if (err == -ETIMEDOUT) {
		pxd_bo_free(&pxd.launch);
		snprintf(io->res.message, sizeof(io->res.message), "timed out; the launch may still run");
	}
	if (err)
		return err;
	pl.fence = -1;
	pl.slot = 0;
	return pxd_launch_done(&pl, &pxd.launch, &io->res, &io->launch_id, &io->device_ns, &io->queue_ns,
			       &io->total_ns, &io->class_assigned);
}

static int pxd_submit(struct pxos_ioc_launch *io)
{
	struct pxd_pending pl;
	int err;

	if (pxd.nsub >= PXOS_MAX_SUBMITTED)
		return -EBUSY; /* reap first */
	err = pxd_launch_send(io, &pl);
	if (err)
		return err;
	pl.token = io->token = ++pxd.next_token;
	pxd.sub[pxd.nsub++] = pl;
	return 0;
}

int pxd_poll(int timeout_ms)
{
	struct pollfd p[PXOS_MAX_SUBMITTED];
	int n;

	for (unsigned int i = 0; i < pxd.nsub; i++)
		p[i] = (struct pollfd){ .fd = pxd.sub[i].fence, .events = POLLIN };
	if (!pxd.nsub)
		return 0;
	do
		n = poll(p, pxd.nsub, timeout_ms);
	while (n < 0 && errno == EINTR);
	return n > 0;
}

static int pxd_reap(struct pxos_ioc_reap *io)
{
	struct pxd_pending pl;
	unsigned int i, known;

	if (io->flags & ~PXOS_REAP_WAIT)
		return -EINVAL;
	for (;;) {
		known = 0;
		for (i = 0; i < pxd.nsub; i++) {
			if (io->token && pxd.sub[i].token != io->token)
				continue;
			known = 1;
			if (pxd_wait(pxd.sub[i].fence, 0))
				break;
		}
		io->pending = pxd.nsub;
		if (i < pxd.nsub)
			break;
		if (!known)
			return -ENOENT;   /* no such token, or nothing submitted */
		if (!(io->flags & PXOS_REAP_WAIT))
			return -EAGAIN;
		pxd_poll(-1);
	}
	pl = pxd.sub[i];
	memmove(&pxd.sub[i], &pxd.sub[i + 1], (pxd.nsub - i - 1) * sizeof(pl)); /* oldest first */
	io->pending = --pxd.nsub;
	io->token = pl.token;
	return pxd_launch_done(&pl, &pxd.slots, &io->res, &io->launch_id, &io->device_ns, &io->queue_ns, &io->total_ns,
			       &io->class_assigned);
}

static int pxd_stats(struct pxos_ioc_stats *io)
{
	struct pxos_cmd_stats cmd;
	const struct pxos_resp_stats *r;
	const unsigned char *p;
	int err;

	PXD_HDR(cmd, PXOS_CMD_STATS);
	err = pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(*r), &io->res, &p);
	if (err)
		return err;
	r = (const void *)p;
	io->memory_quota = r->memory_quota;
	io->memory_used = r->memory_used;
	io->memory_device_bytes = r->memory_device_bytes;
	io->memory_host_bytes = r->memory_host_bytes;
	io->launches_total = r->launches_total;
	io->launches_failed = r->launches_failed;
	io->device_ns_total = r->device_ns_total;
	io->queue_depth = r->queue_depth;
	io->inflight = r->inflight;
	io->compute_share_pct = r->compute_share_pct;
	io->compute_cap_pct = r->compute_cap_pct;
	io->achieved_share_ppm = r->achieved_share_ppm;
	io->nbuffers = r->nbuffers;
	io->nkernels = r->nkernels;
	io->sessions_open = 1;  /* this process sees its own session only */
	io->requests_total = pxd.requests_total;
	io->requests_failed = pxd.requests_failed;
	io->bytes_written = pxd.bytes_written;
	io->bytes_read = pxd.bytes_read;
	return 0;
}

static int pxd_idle_hint(struct pxos_ioc_idle_hint *io)
{
	struct pxos_cmd_idle_hint cmd;

	PXD_HDR(cmd, PXOS_CMD_IDLE_HINT);
	cmd.idle = io->idle;
	return pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(struct pxos_resp_hdr), &io->res, NULL);
}

static int pxd_model_open(struct pxos_ioc_model_open *io)
{
	struct pxos_cmd_model_open cmd;
	const struct pxos_resp_model_open *r;
	const unsigned char *p;
	int err;

	PXD_HDR(cmd, PXOS_CMD_MODEL_OPEN);
	memcpy(cmd.name, io->name, sizeof(cmd.name));
	err = pxd_call(&cmd, sizeof(cmd), NULL, 0, sizeof(*r), &io->res, &p);
	if (err)
		return err;
	r = (const void *)p;
	io->model_id = r->model_id;
	io->meta_handle = r->meta_handle;
	io->meta_bytes = r->meta_bytes;
	io->model_bytes = r->model_bytes;
	io->ntensors = r->ntensors;
	return 0;
}

int pxd_ioctl(int fd, unsigned long cmd, void *arg)
{
	if (!pxd_is(fd))
		return -EBADF;
	switch (cmd) {
	case PXOS_IOC_INFO: return pxd_info(arg);
	case PXOS_IOC_ALLOC: return pxd_alloc(arg);
	case PXOS_IOC_FREE: return pxd_simple(PXOS_CMD_FREE, ((struct pxos_ioc_free *)arg)->handle,
					      &((struct pxos_ioc_free *)arg)->res);
	case PXOS_IOC_WRITE: return pxd_transfer(arg, 1);
	case PXOS_IOC_READ: return pxd_transfer(arg, 0);
	case PXOS_IOC_COMPILE: return pxd_compile(arg);
	case PXOS_IOC_KERNEL_INFO: return pxd_kernel_info(arg);
	case PXOS_IOC_KERNEL_FREE: return pxd_simple(PXOS_CMD_KERNEL_FREE,
						     ((struct pxos_ioc_kernel_free *)arg)->kernel_id,
						     &((struct pxos_ioc_kernel_free *)arg)->res);
	case PXOS_IOC_LAUNCH: return pxd_launch(arg);
	case PXOS_IOC_SUBMIT: return pxd_submit(arg);
	case PXOS_IOC_REAP: return pxd_reap(arg);
	case PXOS_IOC_STATS: return pxd_stats(arg);
	case PXOS_IOC_IDLE_HINT: return pxd_idle_hint(arg);
	case PXOS_IOC_MODEL_OPEN: return pxd_model_open(arg);
	case PXOS_IOC_MODEL_CLOSE: return pxd_simple(PXOS_CMD_MODEL_CLOSE,
						     ((struct pxos_ioc_model_close *)arg)->model_id,
						     &((struct pxos_ioc_model_close *)arg)->res);
	default: return -ENOTTY;
	}
}
