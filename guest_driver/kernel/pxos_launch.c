// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_launch.c - running kernels: LAUNCH (blocking, interruptible, with a timeout),
 * SUBMIT (returns a token at once; poll() says when it finished) and REAP (collects a
 * finished submit). A launch the caller stops waiting for keeps running on the host;
 * the driver frees its request when the device answers.
 */
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "pxos_drv.h"
#include "pxos_ioctl.h"

static bool pxos_binding_ok(const struct pxos_binding *b)
{
	size_t len = strnlen(b->name, PXOS_MAX_NAME);

	if (len == 0 || len == PXOS_MAX_NAME)
		return false;
	switch (le32_to_cpu(b->kind)) {
	case PXOS_BIND_BUFFER:
		return le32_to_cpu(b->dtype) == 0 && b->value != 0;
	case PXOS_BIND_SCALAR_F64:
	case PXOS_BIND_SCALAR_I64:
		return le32_to_cpu(b->dtype) >= PXOS_DTYPE_FLOAT16 &&
		       le32_to_cpu(b->dtype) <= PXOS_DTYPE_INT64;
	default:
		return false;
	}
}

/* A LAUNCH request from the caller's struct, bindings copied in and checked. */
static struct pxos_req *pxos_launch_req(struct pxos_session *sess, struct pxos_ioc_launch *io,
					long *errp)
{
	struct pxos_binding *b;
	struct pxos_cmd_launch *cmd;
	struct pxos_req *req;
	unsigned int i;
	long err;

	if (io->nbindings > PXOS_MAX_BINDINGS) {
		err = -E2BIG;
		goto err_args;
	}
	if ((io->priority > 100 && io->priority != PXOS_PRIORITY_DEFAULT) ||
	    io->class_hint > PXOS_CLASS_BATCH || io->timeout_ms > PXOS_LAUNCH_TIMEOUT_MAX_MS) {
		err = -EINVAL;
		goto err_args;
	}
	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_LAUNCH,
			     sizeof(*cmd) + io->nbindings * sizeof(*b), sizeof(struct pxos_resp_launch));
	if (!req) {
		err = -ENOMEM;
		goto err_args;
	}
	cmd = req->cmd;
	b = (struct pxos_binding *)(cmd + 1);
	if (copy_from_user(b, u64_to_user_ptr(io->bindings_ptr), io->nbindings * sizeof(*b))) {
		err = -EFAULT;
		goto err_req;
	}
	for (i = 0; i < io->nbindings; i++) {
		if (!pxos_binding_ok(&b[i])) {
			err = -EINVAL;
			goto err_req;
		}
	}
	cmd->kernel_id = cpu_to_le64(io->kernel_id);
	cmd->nbindings = cpu_to_le32(io->nbindings);
	cmd->priority = cpu_to_le32(io->priority);
	cmd->class_hint = cpu_to_le32(io->class_hint);
	return req;

err_req:
	pxos_req_free(req);
err_args:
	*errp = err;
	return NULL;
}

static void pxos_launch_result(const struct pxos_req *req, u64 *launch_id, u64 *device_ns,
			       u64 *queue_ns, u64 *total_ns, u32 *class_assigned)
{
	const struct pxos_resp_launch *r = req->resp;

	*launch_id = le64_to_cpu(r->launch_id);
	*device_ns = le64_to_cpu(r->device_ns);
	*queue_ns = le64_to_cpu(r->queue_ns);
	*total_ns = le64_to_cpu(r->total_ns);
	*class_assigned = le32_to_cpu(r->class_assigned);
}

long pxos_ioc_launch(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_launch *io = arg;
	struct pxos_req *req;
	long err;

	req = pxos_launch_req(sess, io, &err);
	if (!req)
		return err;
	err = pxos_req_call(&req, PXOS_WAIT_INTERRUPTIBLE,
			    io->timeout_ms ? io->timeout_ms : PXOS_LAUNCH_TIMEOUT_DEFAULT_MS,
			    sizeof(struct pxos_resp_launch), &io->res);
	if (!req) {
		snprintf(io->res.message, sizeof(io->res.message), "%s; the launch may still run",
			 err == -ETIMEDOUT ? "timed out" : "interrupted");
		return err;
	}
	/* A failed launch still reports its id and timings when the device gave them. */
	if (req->used_len >= sizeof(struct pxos_resp_launch))
		pxos_launch_result(req, &io->launch_id, &io->device_ns, &io->queue_ns,
				   &io->total_ns, &io->class_assigned);
	pxos_req_free(req);
	return err;
}

long pxos_ioc_submit(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_launch *io = arg;
	struct pxos_dev *dev = sess->dev;
	struct pxos_req *req;
	unsigned long flags;
	long err;

	req = pxos_launch_req(sess, io, &err);
	if (!req)
		return err;
	spin_lock_irqsave(&dev->lock, flags);
	if (sess->nsubmitted >= PXOS_MAX_SUBMITTED) {
		spin_unlock_irqrestore(&dev->lock, flags);
		pxos_req_free(req);
		return -EBUSY; /* reap first */
	}
	sess->nsubmitted++;
	req->token = ++sess->next_token;
	spin_unlock_irqrestore(&dev->lock, flags);

	req->async = true;
	err = pxos_req_send(req, PXOS_WAIT_INTERRUPTIBLE);
	if (err) {
		spin_lock_irqsave(&dev->lock, flags);
		sess->nsubmitted--;
		spin_unlock_irqrestore(&dev->lock, flags);
		pxos_req_free(req);
		return err;
	}
	io->token = req->token;
	return 0;
}

/* The finished submit named by token (0: the oldest), taken off the list; or NULL. */
static struct pxos_req *pxos_take_completed(struct pxos_session *sess, u64 token, bool *known)
{
	struct pxos_req *req;

	*known = token == 0 ? sess->nsubmitted > 0 : false;
	list_for_each_entry(req, &sess->completed, node) {
		if (!token || req->token == token) {
			list_del_init(&req->node);
			sess->nsubmitted--;
			return req;
		}
	}
	if (token) {
		list_for_each_entry(req, &sess->submitted, node)
			if (req->token == token)
				*known = true;
	}
	return NULL;
}

long pxos_ioc_reap(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_reap *io = arg;
	struct pxos_dev *dev = sess->dev;
	struct pxos_req *req;
	unsigned long flags;
	bool known;
	long err;

	if (io->flags & ~PXOS_REAP_WAIT)
		return -EINVAL;
	for (;;) {
		spin_lock_irqsave(&dev->lock, flags);
		req = pxos_take_completed(sess, io->token, &known);
		io->pending = sess->nsubmitted;
		spin_unlock_irqrestore(&dev->lock, flags);
		if (req)
			break;
		if (!known)
			return -ENOENT;         /* no such token, or nothing submitted */
		err = pxos_dev_gone(dev);
		if (err)
			return err;
		if (!(io->flags & PXOS_REAP_WAIT))
			return -EAGAIN;
		if (wait_event_interruptible(sess->wq, !list_empty(&sess->completed) ||
					     pxos_dev_gone(dev)))
			return -EINTR;
	}

	io->token = req->token;
	err = pxos_req_result(req, sizeof(struct pxos_resp_launch), &io->res);
	if (!req->err && req->used_len >= sizeof(struct pxos_resp_launch))
		pxos_launch_result(req, &io->launch_id, &io->device_ns, &io->queue_ns,
				   &io->total_ns, &io->class_assigned);
	pxos_req_free(req);
	return err;
}
