// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_file.c - /dev/pxosN: each open file is a session of the device (its id is the
 * ctx_id of every request it makes). open, release (SESSION_CLOSE, then wait for the
 * session's requests), poll (completed submits) and the ioctl dispatch table.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>

#include "pxos_drv.h"
#include "pxos_ioctl.h"

static void pxos_session_release(struct kref *ref)
{
	struct pxos_session *sess = container_of(ref, struct pxos_session, ref);
	struct pxos_dev *dev = sess->dev;
	unsigned long flags;

	spin_lock_irqsave(&dev->lock, flags);
	list_del(&sess->node);
	dev->nsessions--;
	spin_unlock_irqrestore(&dev->lock, flags);
	ida_free(&dev->sess_ida, sess->id);
	kfree(sess);
	pxos_dev_put(dev);
}

void pxos_session_put(struct pxos_session *sess)
{
	kref_put(&sess->ref, pxos_session_release);
}

static int pxos_open(struct inode *inode, struct file *file)
{
	/* misc_open holds misc_mtx, so remove (misc_deregister) cannot run under us. */
	struct miscdevice *misc = file->private_data;
	struct pxos_dev *dev = container_of(misc, struct pxos_dev, misc);
	struct pxos_session *sess;
	unsigned long flags;
	int id, err;

	sess = kzalloc(sizeof(*sess), GFP_KERNEL);
	if (!sess) {
		err = -ENOMEM;
		goto err_alloc;
	}
	id = ida_alloc_range(&dev->sess_ida, 1, PXOS_MAX_SESSIONS, GFP_KERNEL);
	if (id < 0) {
		err = id == -ENOSPC ? -EMFILE : id;
		goto err_id;
	}
	kref_init(&sess->ref);
	kref_get(&dev->ref);
	sess->dev = dev;
	sess->id = id;
	init_waitqueue_head(&sess->wq);
	INIT_LIST_HEAD(&sess->submitted);
	INIT_LIST_HEAD(&sess->completed);

	spin_lock_irqsave(&dev->lock, flags);
	list_add_tail(&sess->node, &dev->sessions);
	dev->nsessions++;
	spin_unlock_irqrestore(&dev->lock, flags);

	file->private_data = sess;
	return nonseekable_open(inode, file);

err_id:
	kfree(sess);
err_alloc:
	return err;
}

/* Tell the host to drop the session's buffers and kernels and cancel its queue. */
static void pxos_session_close(struct pxos_session *sess)
{
	struct pxos_resp_session_close *resp;
	struct pxos_req *req;
	int err;

	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_SESSION_CLOSE,
			     sizeof(struct pxos_cmd_session_close), sizeof(*resp));
	if (!req) {
		pr_warn("%s: session %u: no memory for SESSION_CLOSE\n", sess->dev->name, sess->id);
		return;
	}
	err = pxos_req_call(&req, PXOS_WAIT_UNINTERRUPTIBLE, PXOS_CLOSE_TIMEOUT_MS,
			    sizeof(*resp), NULL);
	if (err && err != -ENODEV)
		pr_warn("%s: session %u: SESSION_CLOSE failed (%d)\n", sess->dev->name, sess->id, err);
	if (req)
		pxos_req_free(req);
}

static int pxos_release(struct inode *inode, struct file *file)
{
	struct pxos_session *sess = file->private_data;
	struct pxos_dev *dev = sess->dev;
	struct pxos_req *req, *tmp;
	unsigned long flags;
	LIST_HEAD(reaped);
	bool dead;

	/* Submits nobody will reap: finished ones go now, running ones when they finish. */
	spin_lock_irqsave(&dev->lock, flags);
	sess->closing = true;
	list_splice_init(&sess->completed, &reaped);
	list_for_each_entry(req, &sess->submitted, node)
		req->abandoned = true;
	dead = dev->dead || dev->lost;  /* lost: nothing will answer a SESSION_CLOSE */
	spin_unlock_irqrestore(&dev->lock, flags);
	list_for_each_entry_safe(req, tmp, &reaped, node) {
		list_del(&req->node);
		pxos_req_free(req);
	}

	if (!dead) {
		pxos_session_close(sess);
		/* The host cancelled what was queued; wait until the device gave it all back. */
		if (!wait_event_timeout(sess->wq, READ_ONCE(sess->inflight) == 0 || pxos_dev_gone(dev),
					msecs_to_jiffies(PXOS_CLOSE_TIMEOUT_MS)))
			pr_warn("%s: session %u: %u requests still with the device\n", dev->name,
				sess->id, READ_ONCE(sess->inflight));
	}
	pxos_session_put(sess);
	return 0;
}

static __poll_t pxos_poll(struct file *file, poll_table *wait)
{
	struct pxos_session *sess = file->private_data;
	struct pxos_dev *dev = sess->dev;
	unsigned long flags;
	__poll_t mask = 0;

	poll_wait(file, &sess->wq, wait);
	spin_lock_irqsave(&dev->lock, flags);
	if (!list_empty(&sess->completed))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (dev->dead || dev->lost)
		mask |= EPOLLHUP | EPOLLERR;
	spin_unlock_irqrestore(&dev->lock, flags);
	return mask;
}

/* One entry per ioctl; the size check keeps a handler from ever seeing a short struct. */
static const struct {
	unsigned int cmd;
	size_t size;
	long (*handler)(struct pxos_session *sess, void *arg);
} pxos_ioctls[] = {
	{ PXOS_IOC_INFO, sizeof(struct pxos_ioc_info), pxos_ioc_info },
	{ PXOS_IOC_ALLOC, sizeof(struct pxos_ioc_alloc), pxos_ioc_alloc },
	{ PXOS_IOC_FREE, sizeof(struct pxos_ioc_free), pxos_ioc_free },
	{ PXOS_IOC_WRITE, sizeof(struct pxos_ioc_transfer), pxos_ioc_write },
	{ PXOS_IOC_READ, sizeof(struct pxos_ioc_transfer), pxos_ioc_read },
	{ PXOS_IOC_COMPILE, sizeof(struct pxos_ioc_compile), pxos_ioc_compile },
	{ PXOS_IOC_KERNEL_INFO, sizeof(struct pxos_ioc_kernel_info), pxos_ioc_kernel_info },
	{ PXOS_IOC_KERNEL_FREE, sizeof(struct pxos_ioc_kernel_free), pxos_ioc_kernel_free },
	{ PXOS_IOC_LAUNCH, sizeof(struct pxos_ioc_launch), pxos_ioc_launch },
	{ PXOS_IOC_SUBMIT, sizeof(struct pxos_ioc_launch), pxos_ioc_submit },
	{ PXOS_IOC_REAP, sizeof(struct pxos_ioc_reap), pxos_ioc_reap },
	{ PXOS_IOC_STATS, sizeof(struct pxos_ioc_stats), pxos_ioc_stats },
	{ PXOS_IOC_IDLE_HINT, sizeof(struct pxos_ioc_idle_hint), pxos_ioc_idle_hint },
	{ PXOS_IOC_MODEL_OPEN, sizeof(struct pxos_ioc_model_open), pxos_ioc_model_open },
	{ PXOS_IOC_MODEL_CLOSE, sizeof(struct pxos_ioc_model_close), pxos_ioc_model_close },
};

static long pxos_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct pxos_session *sess = file->private_data;
	void __user *up = (void __user *)uarg;
	unsigned int i;
	void *karg;
	long ret;

	for (i = 0; i < ARRAY_SIZE(pxos_ioctls); i++)
		if (pxos_ioctls[i].cmd == cmd)
			break;
	if (i == ARRAY_SIZE(pxos_ioctls))
		return -ENOTTY;
	ret = pxos_dev_gone(sess->dev);
	if (ret)
		return ret;

	karg = memdup_user(up, pxos_ioctls[i].size);
	if (IS_ERR(karg))
		return PTR_ERR(karg);
	/* Outputs start clean: nothing of the caller's input leaks back as a result. */
	memset(&((struct pxos_ioc_result *)(karg + pxos_ioctls[i].size))[-1], 0,
	       sizeof(struct pxos_ioc_result));
	ret = pxos_ioctls[i].handler(sess, karg);
	/* The result goes back on failure too: it carries the device's status and text. */
	if (copy_to_user(up, karg, pxos_ioctls[i].size))
		ret = -EFAULT;
	kfree(karg);
	return ret;
}

const struct file_operations pxos_fops = {
	.owner = THIS_MODULE,
	.open = pxos_open,
	.release = pxos_release,
	.poll = pxos_poll,
	.unlocked_ioctl = pxos_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};
