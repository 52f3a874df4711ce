// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_ioctl.c - the buffer, program and query ioctls of /dev/pxosN: check every field
 * from user space, build the PXOS command, call the device, copy its answer back.
 * Launch, submit and reap live in pxos_launch.c.
 */
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "pxos_drv.h"
#include "pxos_ioctl.h"

static size_t pxos_dtype_size(u32 dtype)
{
	switch (dtype) {
	case PXOS_DTYPE_FLOAT16:
		return 2;
	case PXOS_DTYPE_FLOAT32:
	case PXOS_DTYPE_INT32:
		return 4;
	case PXOS_DTYPE_FLOAT64:
	case PXOS_DTYPE_INT64:
		return 8;
	default:
		return 0;
	}
}

static void pxos_copy_str(char *dst, const char *src, size_t size)
{
	memcpy(dst, src, size);
	dst[size - 1] = '\0';
}

long pxos_ioc_info(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_info *io = arg;
	struct pxos_cmd_get_info *cmd;
	struct pxos_resp_info *r;
	struct pxos_req *req;
	long err;

	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_GET_INFO, sizeof(*cmd), sizeof(*r));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->abi_major = cpu_to_le16(PXOS_ABI_MAJOR);
	cmd->abi_minor = cpu_to_le16(PXOS_ABI_MINOR);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS, sizeof(*r), &io->res);
	if (!err) {
		r = req->resp;
		io->ioctl_version = PXOS_IOCTL_VERSION;
		io->session_id = sess->id;
		io->abi_major = le16_to_cpu(r->abi_major);
		io->abi_minor = le16_to_cpu(r->abi_minor);
		io->vm_id = le32_to_cpu(r->vm_id);
		io->memory_quota = le64_to_cpu(r->memory_quota);
		io->memory_used = le64_to_cpu(r->memory_used);
		io->compute_share_pct = le32_to_cpu(r->compute_share_pct);
		io->compute_cap_pct = le32_to_cpu(r->compute_cap_pct);
		io->max_rank = le32_to_cpu(r->max_rank);
		io->max_bindings = le32_to_cpu(r->max_bindings);
		io->max_source_bytes = le32_to_cpu(r->max_source_bytes);
		io->max_name = le32_to_cpu(r->max_name);
		io->max_transfer_bytes = le64_to_cpu(r->max_transfer_bytes);
		io->max_buffer_bytes = le64_to_cpu(r->max_buffer_bytes);
		io->max_inflight = le32_to_cpu(r->max_inflight);
		io->max_kernels = le32_to_cpu(r->max_kernels);
		pxos_copy_str(io->backend, r->backend, sizeof(io->backend));
		pxos_copy_str(io->device_name, r->device_name, sizeof(io->device_name));
	}
	if (req)
		pxos_req_free(req);
	return err;
}

long pxos_ioc_alloc(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_alloc *io = arg;
	struct pxos_cmd_alloc *cmd;
	struct pxos_resp_alloc *r;
	struct pxos_req *req;
	size_t nbytes;
	unsigned int i;
	long err;

	nbytes = pxos_dtype_size(io->dtype);
	if (!nbytes || io->rank > PXOS_MAX_RANK)
		return -EINVAL;
	for (i = 0; i < PXOS_MAX_RANK; i++) {
		if (i >= io->rank ? io->dims[i] != 0 : io->dims[i] == 0)
			return -EINVAL;
		if (i < io->rank && check_mul_overflow(nbytes, (size_t)io->dims[i], &nbytes))
			return -E2BIG;
	}
	if (nbytes > PXOS_MAX_BUFFER_BYTES)
		return -E2BIG;

	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_ALLOC, sizeof(*cmd), sizeof(*r));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->dtype = cpu_to_le32(io->dtype);
	cmd->rank = cpu_to_le32(io->rank);
	for (i = 0; i < PXOS_MAX_RANK; i++)
		cmd->dims[i] = cpu_to_le64(io->dims[i]);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS, sizeof(*r), &io->res);
	if (!err) {
		r = req->resp;
		io->handle = le64_to_cpu(r->handle);
		io->nbytes = le64_to_cpu(r->nbytes);
	}
	if (req)
		pxos_req_free(req);
	return err;
}

/* FREE and KERNEL_FREE: one id in, nothing but a status out. */
static long pxos_simple_call(struct pxos_session *sess, u32 type, u64 id, struct pxos_ioc_result *res)
{
	struct pxos_cmd_free *cmd; /* same layout as struct pxos_cmd_kernel */
	struct pxos_req *req;
	long err;

	BUILD_BUG_ON(sizeof(struct pxos_cmd_free) != sizeof(struct pxos_cmd_kernel));
	req = pxos_req_alloc(sess->dev, sess, type, sizeof(*cmd), sizeof(struct pxos_resp_hdr));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->handle = cpu_to_le64(id);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS,
			    sizeof(struct pxos_resp_hdr), res);
	if (req)
		pxos_req_free(req);
	return err;
}

long pxos_ioc_free(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_free *io = arg;

	return pxos_simple_call(sess, PXOS_CMD_FREE, io->handle, &io->res);
}

long pxos_ioc_kernel_free(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_kernel_free *io = arg;

	return pxos_simple_call(sess, PXOS_CMD_KERNEL_FREE, io->kernel_id, &io->res);
}

/* One WRITE or READ request of at most PXOS_REQ_DATA_MAX bytes; returns bytes moved. */
static long pxos_transfer_one(struct pxos_session *sess, struct pxos_ioc_transfer *io, bool write,
			      u64 done)
{
	u64 want = min_t(u64, io->length - done, PXOS_MAX_TRANSFER_BYTES);
	void __user *ubuf = u64_to_user_ptr(io->user_ptr + done);
	struct pxos_cmd_transfer *cmd;
	struct pxos_req *req;
	long err;

	req = pxos_req_alloc(sess->dev, sess, write ? PXOS_CMD_WRITE : PXOS_CMD_READ, sizeof(*cmd),
			     sizeof(struct pxos_resp_hdr));
	if (!req)
		return -ENOMEM;
	err = pxos_data_alloc(&req->data, want);
	if (err)
		goto out;
	req->data_writable = !write;
	if (write) {
		err = pxos_data_from_user(&req->data, ubuf);
		if (err)
			goto out;
	}
	cmd = req->cmd;
	cmd->handle = cpu_to_le64(io->handle);
	cmd->offset = cpu_to_le64(io->offset + done);
	cmd->length = cpu_to_le64(req->data.len);

	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS,
			    sizeof(struct pxos_resp_hdr), &io->res);
	if (err)
		goto out;
	if (!write) {
		/* The device must have written the response and every byte asked for. */
		if (req->used_len != sizeof(struct pxos_resp_hdr) + req->data.len) {
			err = -EPROTO;
			goto out;
		}
		err = pxos_data_to_user(&req->data, ubuf, req->data.len);
		if (err)
			goto out;
		atomic64_add(req->data.len, &sess->dev->stats.bytes_read);
	} else {
		atomic64_add(req->data.len, &sess->dev->stats.bytes_written);
	}
	err = req->data.len;
out:
	if (req)
		pxos_req_free(req);
	return err;
}

static long pxos_transfer(struct pxos_session *sess, struct pxos_ioc_transfer *io, bool write)
{
	u64 end;
	long n;

	io->done = 0;
	if (!io->length || io->length > PXOS_MAX_BUFFER_BYTES)
		return io->length ? -E2BIG : -EINVAL;
	if (check_add_overflow(io->offset, io->length, &end) || end > PXOS_MAX_BUFFER_BYTES)
		return -EINVAL;
	if (!access_ok(u64_to_user_ptr(io->user_ptr), io->length))
		return -EFAULT;

	while (io->done < io->length) {
		n = pxos_transfer_one(sess, io, write, io->done);
		if (n < 0)
			return n;
		io->done += n;
		if (fatal_signal_pending(current) && io->done < io->length)
			return -EINTR;
	}
	return 0;
}

long pxos_ioc_write(struct pxos_session *sess, void *arg)
{
	return pxos_transfer(sess, arg, true);
}

long pxos_ioc_read(struct pxos_session *sess, void *arg)
{
	return pxos_transfer(sess, arg, false);
}

long pxos_ioc_compile(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_compile *io = arg;
	struct pxos_resp_compile *r;
	struct pxos_cmd_compile *cmd;
	struct pxos_req *req;
	unsigned int i;
	long err;

	if (!io->source_len || io->source_len > PXOS_MAX_SOURCE_BYTES)
		return io->source_len ? -E2BIG : -EINVAL;
	io->nkernels = 0;
	io->ndiags = 0;
	memset(io->kernels, 0, sizeof(io->kernels));
	memset(io->diags, 0, sizeof(io->diags));

	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_COMPILE, sizeof(*cmd), sizeof(*r));
	if (!req)
		return -ENOMEM;
	err = pxos_data_alloc(&req->data, io->source_len);
	if (!err && req->data.len < io->source_len)
		err = -ENOMEM; /* the source must travel in one request */
	if (!err)
		err = pxos_data_from_user(&req->data, u64_to_user_ptr(io->source_ptr));
	if (err)
		goto out;
	cmd = req->cmd;
	cmd->source_len = cpu_to_le32(io->source_len);

	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS,
			    offsetof(struct pxos_resp_compile, kernels), &io->res);
	if (!req || (err && err != -EBADMSG))
		goto out;
	r = req->resp;
	if (!err) {
		io->nkernels = min_t(u32, le32_to_cpu(r->nkernels), PXOS_MAX_KERNELS);
		for (i = 0; i < io->nkernels; i++) {
			io->kernels[i].kernel_id = le64_to_cpu(r->kernels[i].kernel_id);
			io->kernels[i].nparams = le32_to_cpu(r->kernels[i].nparams);
			pxos_copy_str(io->kernels[i].name, r->kernels[i].name, PXOS_MAX_NAME);
		}
	} else if (req->used_len >= offsetof(struct pxos_resp_compile, kernels)) {
		io->ndiags = min_t(u32, le32_to_cpu(r->ndiags), PXOS_MAX_DIAGS);
		for (i = 0; i < io->ndiags; i++) {
			io->diags[i].line = le32_to_cpu(r->diags[i].line);
			io->diags[i].column = le32_to_cpu(r->diags[i].column);
			pxos_copy_str(io->diags[i].code, r->diags[i].code, sizeof(io->diags[i].code));
			pxos_copy_str(io->diags[i].message, r->diags[i].message, PXOS_MAX_MESSAGE);
		}
	}
out:
	if (req)
		pxos_req_free(req);
	return err;
}

long pxos_ioc_kernel_info(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_kernel_info *io = arg;
	struct pxos_resp_kernel_info *r;
	struct pxos_cmd_kernel *cmd;
	struct pxos_req *req;
	unsigned int i, j;
	long err;

	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_KERNEL_INFO, sizeof(*cmd), sizeof(*r));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->kernel_id = cpu_to_le64(io->kernel_id);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS,
			    offsetof(struct pxos_resp_kernel_info, params), &io->res);
	if (!err) {
		r = req->resp;
		io->nparams = min_t(u32, le32_to_cpu(r->nparams), PXOS_MAX_PARAMS);
		if (req->used_len < offsetof(struct pxos_resp_kernel_info, params) +
				    io->nparams * sizeof(r->params[0])) {
			io->nparams = 0;
			err = -EPROTO;
		}
		io->class_hint = le32_to_cpu(r->class_hint);
		io->priority = le32_to_cpu(r->priority);
		io->nstatements = le32_to_cpu(r->nstatements);
		pxos_copy_str(io->name, r->name, PXOS_MAX_NAME);
		memset(io->params, 0, sizeof(io->params));
		for (i = 0; i < io->nparams; i++) {
			pxos_copy_str(io->params[i].name, r->params[i].name, PXOS_MAX_NAME);
			io->params[i].dtype = le32_to_cpu(r->params[i].dtype);
			io->params[i].direction = le32_to_cpu(r->params[i].direction);
			io->params[i].rank = le32_to_cpu(r->params[i].rank);
			for (j = 0; j < PXOS_MAX_RANK; j++)
				io->params[i].dims[j] = le64_to_cpu(r->params[i].dims[j]);
		}
	}
	if (req)
		pxos_req_free(req);
	return err;
}

long pxos_ioc_stats(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_stats *io = arg;
	struct pxos_dev *dev = sess->dev;
	struct pxos_resp_stats *r;
	struct pxos_req *req;
	long err;

	req = pxos_req_alloc(dev, sess, PXOS_CMD_STATS, sizeof(struct pxos_cmd_stats), sizeof(*r));
	if (!req)
		return -ENOMEM;
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS, sizeof(*r), &io->res);
	if (!err) {
		r = req->resp;
		io->memory_quota = le64_to_cpu(r->memory_quota);
		io->memory_used = le64_to_cpu(r->memory_used);
		io->memory_device_bytes = le64_to_cpu(r->memory_device_bytes);
		io->memory_host_bytes = le64_to_cpu(r->memory_host_bytes);
		io->launches_total = le64_to_cpu(r->launches_total);
		io->launches_failed = le64_to_cpu(r->launches_failed);
		io->device_ns_total = le64_to_cpu(r->device_ns_total);
		io->queue_depth = le32_to_cpu(r->queue_depth);
		io->inflight = le32_to_cpu(r->inflight);
		io->compute_share_pct = le32_to_cpu(r->compute_share_pct);
		io->compute_cap_pct = le32_to_cpu(r->compute_cap_pct);
		io->achieved_share_ppm = le32_to_cpu(r->achieved_share_ppm);
		io->nbuffers = le32_to_cpu(r->nbuffers);
		io->nkernels = le32_to_cpu(r->nkernels);
	}
	if (req)
		pxos_req_free(req);
	io->sessions_open = READ_ONCE(dev->nsessions);
	io->requests_total = atomic64_read(&dev->stats.requests_total);
	io->requests_failed = atomic64_read(&dev->stats.requests_failed);
	io->bytes_written = atomic64_read(&dev->stats.bytes_written);
	io->bytes_read = atomic64_read(&dev->stats.bytes_read);
	return err;
}

long pxos_ioc_idle_hint(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_idle_hint *io = arg;
	struct pxos_cmd_idle_hint *cmd;
	struct pxos_req *req;
	long err;

	if (io->idle > 1)
		return -EINVAL;
	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_IDLE_HINT, sizeof(*cmd),
			     sizeof(struct pxos_resp_hdr));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->idle = cpu_to_le32(io->idle);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS,
			    sizeof(struct pxos_resp_hdr), &io->res);
	if (req)
		pxos_req_free(req);
	return err;
}
