/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pxos_drv.h - internal state of the pxos_gpu driver: the device, its sessions (one per
 * open file) and its requests (one per descriptor chain on the control queue).
 *
 * Lifetimes: a request holds a reference on its session, a session on its device, so a
 * completion that arrives after the caller gave up (signal, timeout, process exit) or
 * after the device was removed never touches freed memory. dev->lock (taken from the
 * virtqueue interrupt) guards the virtqueue, every request's state and the session lists.
 */
#ifndef PXOS_DRV_H
#define PXOS_DRV_H

#include <linux/completion.h>
#include <linux/idr.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/virtio.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "pxos_gpu.h"

#define PXOS_CTRLQ 0
#define PXOS_CURSORQ 1
#define PXOS_NVQS 2

/*
 * Bounce data is built of page chunks of up to 64 KiB: big enough that one request
 * needs few descriptors, small enough that the allocation succeeds in a fragmented guest
 * (we fall back to smaller orders). 32 chunks keep a chain at 34 descriptors (command,
 * data, response), one indirect table, and bound one request's kernel memory to 2 MiB.
 */
#define PXOS_SEG_MAX_ORDER 4
#define PXOS_MAX_SEGS 32
#define PXOS_REQ_DATA_MAX ((size_t)PXOS_MAX_SEGS << (PAGE_SHIFT + PXOS_SEG_MAX_ORDER))

/* Session ids travel in hdr.ctx_id; 0 is the driver's own. */
#define PXOS_MAX_SESSIONS 4096

#define PXOS_PROBE_TIMEOUT_MS 15000   /* GET_INFO at probe: a slow TCG host still answers */
#define PXOS_CALL_TIMEOUT_MS 60000    /* any command but LAUNCH */
#define PXOS_CLOSE_TIMEOUT_MS 30000   /* release waits this long for its requests */

/*
 * The backend watch (pxos_req.c): pxos-hvd gone (killed, restarted: QEMU's vhost-user-gpu
 * never reconnects) means requests that are never answered. When requests wait and
 * nothing has completed for PXOS_STALL_MS, the driver pings the device (GET_INFO, answered
 * even while launches run); no completion within PXOS_PING_TIMEOUT_MS and the device is
 * lost: every waiting and later call fails with -EHOSTDOWN instead of hanging. The ping
 * has ring space of its own: other requests leave PXOS_PING_DESCS descriptors free.
 */
#define PXOS_WATCH_PERIOD_MS 1000
#define PXOS_STALL_MS 3000
#define PXOS_PING_TIMEOUT_MS 5000
#define PXOS_PING_DESCS 2

struct pxos_data {
	unsigned int nsegs;
	size_t len;                   /* bytes covered, <= the sum of the chunks */
	struct page *page[PXOS_MAX_SEGS];
	unsigned int order[PXOS_MAX_SEGS];
};

enum pxos_req_state {
	PXOS_REQ_NEW,
	PXOS_REQ_INFLIGHT,
	PXOS_REQ_DONE,
};

enum pxos_wait_mode {
	PXOS_WAIT_UNINTERRUPTIBLE,
	PXOS_WAIT_KILLABLE,
	PXOS_WAIT_INTERRUPTIBLE,
};

struct pxos_dev;
struct pxos_session;

struct pxos_req {
	struct pxos_dev *dev;
	struct pxos_session *sess;    /* holds a reference; NULL for the driver's own */
	struct list_head node;        /* async: session's submitted or completed list */
	struct completion done;
	enum pxos_req_state state;
	bool async;
	bool abandoned;               /* nobody waits: free it when the device is done */
	bool data_writable;           /* READ: the device fills data */
	bool ping;                    /* the watch's ping: may use the reserved ring space */
	int err;                      /* 0 if the device answered; -ENODEV if taken back */
	u32 used_len;
	u64 token;
	void *cmd;
	u32 cmd_len;
	void *resp;
	u32 resp_len;
	struct pxos_data data;
	struct scatterlist cmd_sg, resp_sg, data_sg[PXOS_MAX_SEGS];
};

struct pxos_counters {
	atomic64_t requests_total;
	atomic64_t requests_failed;
	atomic64_t bytes_written;
	atomic64_t bytes_read;
};

struct pxos_dev {
	struct kref ref;
	struct virtio_device *vdev;
	struct virtqueue *ctrlq;
	spinlock_t lock;
	bool dead;                    /* removed or never probed: no new requests */
	bool lost;                    /* the backend stopped answering: every call -EHOSTDOWN */
	u64 completions;              /* bumped per interrupt; ring-space waiters watch it */
	unsigned int inflight;        /* requests on the ring */
	unsigned long last_done;      /* jiffies of the last completion (or of going busy) */
	unsigned long ping_at;        /* jiffies the watch's ping was sent; 0: none out */
	struct delayed_work watch;
	wait_queue_head_t space_wq;
	struct list_head sessions;
	unsigned int nsessions;
	struct ida sess_ida;
	atomic64_t next_fence;
	int index;
	char name[16];
	struct miscdevice misc;
	struct pxos_resp_info info;   /* from probe */
	struct pxos_counters stats;
};

struct pxos_session {
	struct kref ref;
	struct pxos_dev *dev;
	u32 id;
	struct list_head node;        /* dev->sessions */
	wait_queue_head_t wq;         /* completions of submits; release waits here too */
	struct list_head submitted;   /* async requests the device has not finished */
	struct list_head completed;   /* finished, not yet reaped */
	unsigned int nsubmitted;      /* both lists */
	unsigned int inflight;        /* requests of this session on the ring */
	u64 next_token;
	bool closing;
};

/* pxos_req.c */
struct pxos_req *pxos_req_alloc(struct pxos_dev *dev, struct pxos_session *sess, u32 type,
				u32 cmd_len, u32 resp_len);
void pxos_req_free(struct pxos_req *req);
int pxos_req_send(struct pxos_req *req, enum pxos_wait_mode mode);
int pxos_req_wait(struct pxos_req *req, enum pxos_wait_mode mode, unsigned long timeout_ms);
int pxos_req_call(struct pxos_req **reqp, enum pxos_wait_mode mode, unsigned long timeout_ms,
		  u32 min_resp, struct pxos_ioc_result *res);
int pxos_req_result(struct pxos_req *req, u32 min_resp, struct pxos_ioc_result *res);
void pxos_ctrlq_done(struct virtqueue *vq);
void pxos_dev_drain(struct pxos_dev *dev);
void pxos_watch(struct work_struct *work);

/* -ENODEV once the device is removed, -EHOSTDOWN once its backend is lost, else 0. */
static inline int pxos_dev_gone(struct pxos_dev *dev)
{
	if (READ_ONCE(dev->dead))
		return -ENODEV;
	return READ_ONCE(dev->lost) ? -EHOSTDOWN : 0;
}
int pxos_status_errno(u32 status);

/* pxos_data.c */
void pxos_data_free(struct pxos_data *data);
int pxos_data_alloc(struct pxos_data *data, size_t want);
int pxos_data_from_user(struct pxos_data *data, const void __user *src);
int pxos_data_to_user(const struct pxos_data *data, void __user *dst, size_t len);

/* pxos_main.c */
void pxos_dev_put(struct pxos_dev *dev);

/* pxos_file.c */
void pxos_session_put(struct pxos_session *sess);
extern const struct file_operations pxos_fops;

#endif /* PXOS_DRV_H */
