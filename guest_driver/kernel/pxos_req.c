// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_req.c - requests on the control queue: descriptor chains, the
 * completion interrupt, waiting (with signals and timeouts) and taking every buffer back
 * from a device that is being reset.
 *
 * A request is one chain: the command (plus inline payload) and the WRITE/COMPILE data
 * are device-readable; the response and READ data are device-writable. Whoever waits on
 * a request frees it; a waiter that gives up marks it abandoned and the completion path
 * frees it instead, so the device never writes into freed memory.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/jiffies.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "pxos_drv.h"

struct pxos_req *pxos_req_alloc(struct pxos_dev *dev, struct pxos_session *sess, u32 type,
				u32 cmd_len, u32 resp_len)
{
	struct pxos_ctrl_hdr *hdr;
	struct pxos_req *req;

	req = kzalloc(sizeof(*req), GFP_KERNEL);
	if (!req)
		goto err_req;
	req->cmd = kzalloc(cmd_len, GFP_KERNEL);
	if (!req->cmd)
		goto err_cmd;
	req->resp = kzalloc(resp_len, GFP_KERNEL);
	if (!req->resp)
		goto err_resp;

	req->dev = dev;
	req->cmd_len = cmd_len;
	req->resp_len = resp_len;
	INIT_LIST_HEAD(&req->node);
	init_completion(&req->done);
	if (sess) {
		kref_get(&sess->ref);
		req->sess = sess;
	} else {
		kref_get(&dev->ref);
	}

	hdr = req->cmd;
	hdr->type = cpu_to_le32(type);
	hdr->fence_id = cpu_to_le64(atomic64_inc_return(&dev->next_fence));
	hdr->ctx_id = cpu_to_le32(sess ? sess->id : 0);
	return req;

err_resp:
	kfree(req->cmd);
err_cmd:
	kfree(req);
err_req:
	return NULL;
}

/* Safe from the completion interrupt: nothing here sleeps. */
void pxos_req_free(struct pxos_req *req)
{
	struct pxos_dev *dev = req->dev;

	pxos_data_free(&req->data);
	kfree(req->resp);
	kfree(req->cmd);
	if (req->sess)
		pxos_session_put(req->sess);
	else
		pxos_dev_put(dev);
	kfree(req);
}

/* Called with dev->lock held; requests to free go on `to_free`. */
static void pxos_req_finish(struct pxos_req *req, u32 len, int err, struct list_head *to_free)
{
	struct pxos_session *sess = req->sess;

	req->used_len = min(len, req->resp_len + (req->data_writable ? (u32)req->data.len : 0));
	req->err = err;
	req->state = PXOS_REQ_DONE;
	req->dev->inflight--;
	if (err)
		atomic64_inc(&req->dev->stats.requests_failed);
	if (sess && !--sess->inflight)
		wake_up_all(&sess->wq);

	if (req->abandoned) {
		list_del_init(&req->node);
		list_add_tail(&req->node, to_free);
	} else if (req->async) {
		list_move_tail(&req->node, &sess->completed);
		wake_up_interruptible_all(&sess->wq);
	} else {
		complete(&req->done);
	}
}

static void pxos_free_list(struct list_head *to_free)
{
	struct pxos_req *req, *tmp;

	list_for_each_entry_safe(req, tmp, to_free, node) {
		list_del(&req->node);
		pxos_req_free(req);
	}
}

void pxos_ctrlq_done(struct virtqueue *vq)
{
	struct pxos_dev *dev = vq->vdev->priv;
	struct pxos_req *req;
	unsigned long flags;
	LIST_HEAD(to_free);
	unsigned int len;

	spin_lock_irqsave(&dev->lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len)))
			pxos_req_finish(req, len, 0, &to_free);
	} while (!virtqueue_enable_cb(vq));
	dev->completions++;
	dev->last_done = jiffies;
	spin_unlock_irqrestore(&dev->lock, flags);

	wake_up_all(&dev->space_wq);
	pxos_free_list(&to_free);
}

/*
 * After virtio_reset_device(): the device no longer touches our buffers. Collect what it
 * finished, take back what it never started (-ENODEV), and wake everyone who waits.
 */
void pxos_dev_drain(struct pxos_dev *dev)
{
	struct pxos_session *sess;
	struct pxos_req *req;
	unsigned long flags;
	LIST_HEAD(to_free);
	unsigned int len;

	spin_lock_irqsave(&dev->lock, flags);
	dev->dead = true;
	while ((req = virtqueue_get_buf(dev->ctrlq, &len)))
		pxos_req_finish(req, len, 0, &to_free);
	while ((req = virtqueue_detach_unused_buf(dev->ctrlq)))
		pxos_req_finish(req, 0, -ENODEV, &to_free);
	list_for_each_entry(sess, &dev->sessions, node)
		wake_up_all(&sess->wq);
	spin_unlock_irqrestore(&dev->lock, flags);

	wake_up_all(&dev->space_wq);
	pxos_free_list(&to_free);
}

static unsigned int pxos_req_sgs(struct pxos_req *req, struct scatterlist **sgs,
				 unsigned int *nout)
{
	unsigned int n = 0, i;

	sg_init_one(&req->cmd_sg, req->cmd, req->cmd_len);
	sgs[n++] = &req->cmd_sg;
	if (req->data.nsegs) {
		size_t left = req->data.len;

		sg_init_table(req->data_sg, req->data.nsegs);
		for (i = 0; i < req->data.nsegs; i++) {
			size_t seg = min(PAGE_SIZE << req->data.order[i], left);

			sg_set_page(&req->data_sg[i], req->data.page[i], seg, 0);
			left -= seg;
		}
	}
	if (req->data.nsegs && !req->data_writable)
		sgs[n++] = req->data_sg;
	*nout = n;
	sg_init_one(&req->resp_sg, req->resp, req->resp_len);
	sgs[n++] = &req->resp_sg;
	if (req->data.nsegs && req->data_writable)
		sgs[n++] = req->data_sg;
	return n;
}

/*
 * Put the request on the ring, waiting for space while the ring is full; a ring that has
 * not drained in PXOS_CALL_TIMEOUT_MS means a dead backend (-ETIMEDOUT), so even the
 * uninterruptible path of release() cannot hang forever.
 */
int pxos_req_send(struct pxos_req *req, enum pxos_wait_mode mode)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(PXOS_CALL_TIMEOUT_MS);
	struct pxos_dev *dev = req->dev;
	struct scatterlist *sgs[4];
	unsigned int n, nout;
	unsigned long flags;
	bool notify;
	u64 seen;
	int err;

	n = pxos_req_sgs(req, sgs, &nout);
	for (;;) {
		spin_lock_irqsave(&dev->lock, flags);
		err = pxos_dev_gone(dev);
		if (err) {
			spin_unlock_irqrestore(&dev->lock, flags);
			return err;
		}
		/* The last PXOS_PING_DESCS descriptors are the watch's: a full ring can be pinged. */
		if (!req->ping && dev->ctrlq->num_free <= PXOS_PING_DESCS)
			err = -ENOSPC;
		else
			err = virtqueue_add_sgs(dev->ctrlq, sgs, nout, n - nout, req, GFP_ATOMIC);
		if (!err) {
			req->state = PXOS_REQ_INFLIGHT;
			if (!dev->inflight++)
				dev->last_done = jiffies; /* busy from now: the stall clock starts */
			if (req->sess)
				req->sess->inflight++;
			if (req->async)
				list_add_tail(&req->node, &req->sess->submitted);
			notify = virtqueue_kick_prepare(dev->ctrlq);
			spin_unlock_irqrestore(&dev->lock, flags);
			atomic64_inc(&dev->stats.requests_total);
			if (notify)
				virtqueue_notify(dev->ctrlq);
			return 0;
		}
		seen = dev->completions;
		spin_unlock_irqrestore(&dev->lock, flags);
		if (err != -ENOSPC || req->ping)
			return err;
		if (time_after(jiffies, deadline))
			return -ETIMEDOUT;

		/* The ring is full: wait for a completion (re-checked once a second). */
		if (mode == PXOS_WAIT_UNINTERRUPTIBLE) {
			wait_event_timeout(dev->space_wq,
					   READ_ONCE(dev->completions) != seen || pxos_dev_gone(dev), HZ);
		} else if (mode == PXOS_WAIT_KILLABLE) {
			if (wait_event_killable_timeout(dev->space_wq, READ_ONCE(dev->completions) != seen ||
							pxos_dev_gone(dev), HZ) < 0)
				return -EINTR;
		} else {
			if (wait_event_interruptible_timeout(dev->space_wq,
							     READ_ONCE(dev->completions) != seen ||
							     pxos_dev_gone(dev), HZ) < 0)
				return -EINTR;
		}
	}
}

/*
 * Wait for a sent request. 0: it is done and the caller owns it. -EINTR / -ETIMEDOUT /
 * -EHOSTDOWN (the backend was lost meanwhile): it is still with the device and now
 * abandoned; the caller must not touch it again. Waits in slices of a second so that a
 * lost backend ends the wait within one.
 */
int pxos_req_wait(struct pxos_req *req, enum pxos_wait_mode mode, unsigned long timeout_ms)
{
	unsigned long timeout = msecs_to_jiffies(timeout_ms), slice;
	struct pxos_dev *dev = req->dev;
	unsigned long flags;
	long left;

	for (;;) {
		slice = min_t(unsigned long, timeout, HZ);
		if (mode == PXOS_WAIT_UNINTERRUPTIBLE)
			left = wait_for_completion_timeout(&req->done, slice);
		else if (mode == PXOS_WAIT_KILLABLE)
			left = wait_for_completion_killable_timeout(&req->done, slice);
		else
			left = wait_for_completion_interruptible_timeout(&req->done, slice);
		if (left != 0)
			break;  /* done, or a signal */
		timeout -= slice;
		if (!timeout || READ_ONCE(dev->lost))
			break;
	}
	if (left > 0)
		return 0;

	spin_lock_irqsave(&dev->lock, flags);
	if (req->state == PXOS_REQ_DONE) {
		spin_unlock_irqrestore(&dev->lock, flags);
		return 0;
	}
	req->abandoned = true;
	spin_unlock_irqrestore(&dev->lock, flags);
	atomic64_inc(&dev->stats.requests_failed);
	if (left < 0)
		return -EINTR;
	return READ_ONCE(dev->lost) ? -EHOSTDOWN : -ETIMEDOUT;
}

/* The watch gives up on the backend: fail every waiter now and every call from now on. */
static void pxos_dev_lose(struct pxos_dev *dev)
{
	struct pxos_session *sess;

	/* dev->lock held */
	dev->lost = true;
	list_for_each_entry(sess, &dev->sessions, node)
		wake_up_all(&sess->wq);
	dev_err(&dev->vdev->dev,
		"%s: pxos-hvd stopped answering (nothing completed in %u ms, no answer to a ping in %u ms): every call now fails with EHOSTDOWN; restart the VM once pxos-hvd is back\n",
		dev->name, PXOS_STALL_MS, PXOS_PING_TIMEOUT_MS);
}

/*
 * The backend watch, every PXOS_WATCH_PERIOD_MS while the device lives (see pxos_drv.h):
 * requests waiting with no completion for PXOS_STALL_MS get the device pinged; any
 * completion clears it; none for PXOS_PING_TIMEOUT_MS after the ping loses the device.
 */
void pxos_watch(struct work_struct *work)
{
	struct pxos_dev *dev = container_of(to_delayed_work(work), struct pxos_dev, watch);
	struct pxos_cmd_get_info *cmd;
	struct pxos_req *ping = NULL;
	unsigned long flags, now = jiffies;
	bool lost = false;

	spin_lock_irqsave(&dev->lock, flags);
	if (dev->dead || dev->lost) {
		spin_unlock_irqrestore(&dev->lock, flags);
		return;
	}
	if (!dev->inflight || time_before(now, dev->last_done + msecs_to_jiffies(PXOS_STALL_MS))) {
		dev->ping_at = 0;  /* idle, or answering */
	} else if (!dev->ping_at) {
		dev->ping_at = now ? now : 1;
		spin_unlock_irqrestore(&dev->lock, flags);
		ping = pxos_req_alloc(dev, NULL, PXOS_CMD_GET_INFO, sizeof(*cmd), sizeof(struct pxos_resp_info));
		spin_lock_irqsave(&dev->lock, flags);
	} else if (time_after(now, dev->ping_at + msecs_to_jiffies(PXOS_PING_TIMEOUT_MS))) {
		pxos_dev_lose(dev);
		lost = true;
	}
	spin_unlock_irqrestore(&dev->lock, flags);

	if (lost) {
		wake_up_all(&dev->space_wq);
		return;
	}
	if (ping) {
		cmd = ping->cmd;
		cmd->abi_major = cpu_to_le16(PXOS_ABI_MAJOR);
		cmd->abi_minor = cpu_to_le16(PXOS_ABI_MINOR);
		ping->ping = true;
		ping->abandoned = true;  /* nobody waits: the completion path frees it */
		if (pxos_req_send(ping, PXOS_WAIT_UNINTERRUPTIBLE)) {
			pxos_req_free(ping);  /* never on the ring: the next round tries again */
			spin_lock_irqsave(&dev->lock, flags);
			dev->ping_at = 0;
			spin_unlock_irqrestore(&dev->lock, flags);
		}
	}
	schedule_delayed_work(&dev->watch, msecs_to_jiffies(PXOS_WATCH_PERIOD_MS));
}

int pxos_status_errno(u32 status)
{
	switch (status) {
	case PXOS_S_OK:
		return 0;
	case PXOS_S_INVALID:
	case PXOS_S_BIND:
		return -EINVAL;
	case PXOS_S_NOT_FOUND:
		return -ENOENT;
	case PXOS_S_QUOTA:
		return -EDQUOT;
	case PXOS_S_NO_DEVICE_MEMORY:
		return -ENOMEM;
	case PXOS_S_COMPILE:
		return -EBADMSG;
	case PXOS_S_CANCELLED:
		return -ECANCELED;
	case PXOS_S_BUSY:
		return -EBUSY;
	case PXOS_S_TOO_LARGE:
		return -E2BIG;
	case PXOS_S_UNSUPPORTED:
		return -EOPNOTSUPP;
	case PXOS_S_EXISTS:
		return -EEXIST;
	case PXOS_S_RANGE:
		return -ERANGE;
	case PXOS_S_READ_ONLY:
		return -EROFS;
	case PXOS_S_VM_GONE:
		return -ENODEV;
	default: /* EXEC, INTERNAL and anything newer than this driver */
		return -EIO;
	}
}

/*
 * Read the outcome of a finished request into `res`: 0, a status mapped to an errno, or
 * -EPROTO when the answer is not a well-formed pxOS response of at least min_resp bytes.
 */
int pxos_req_result(struct pxos_req *req, u32 min_resp, struct pxos_ioc_result *res)
{
	const struct pxos_resp_hdr *r = req->resp;
	u32 status;

	if (req->err)
		return req->err;
	if (req->used_len < sizeof(*r) || le32_to_cpu(r->hdr.type) != PXOS_RESP) {
		/* by name: vdev may be gone once the device was removed */
		pr_warn_ratelimited("%s: malformed response (%u bytes, type 0x%x)\n", req->dev->name,
				    req->used_len, req->used_len >= 4 ? le32_to_cpu(r->hdr.type) : 0);
		return -EPROTO;
	}
	status = le32_to_cpu(r->status);
	if (res) {
		res->status = status;
		memcpy(res->message, r->message, sizeof(res->message));
		res->message[sizeof(res->message) - 1] = '\0';
	}
	if (status == PXOS_S_OK && req->used_len < min_resp)
		return -EPROTO;
	return pxos_status_errno(status);
}

/*
 * Send, wait, decode: the synchronous path most ioctls take. On return *reqp is the
 * caller's to read and free, or NULL when the request was abandoned to the device.
 */
int pxos_req_call(struct pxos_req **reqp, enum pxos_wait_mode mode, unsigned long timeout_ms,
		  u32 min_resp, struct pxos_ioc_result *res)
{
	int err;

	err = pxos_req_send(*reqp, mode);
	if (err)
		return err;
	err = pxos_req_wait(*reqp, mode, timeout_ms);
	if (err) {
		*reqp = NULL;
		return err;
	}
	return pxos_req_result(*reqp, min_resp, res);
}
