/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pxq_core.h - the split-virtqueue core of pxOS's vhost-user backend.
 *
 * Pure functions over plain structs: translate guest addresses through the memory table,
 * walk descriptor chains (direct and indirect), push used elements with the barriers the
 * virtio spec asks for, and decide notifications with the event index (virtio 1.2,
 * section 2.7 "Split Virtqueues"). No threads, no sockets, no allocation: Python owns the
 * loop, the eventfds and the lifetime of every buffer passed in.
 *
 * Every value a guest controls is read once (relaxed atomic loads) into a local and then
 * validated; errors are negative errno values. This header is also fed to cffi's cdef,
 * so it holds only declarations cffi can parse (no #include, no macros with expressions).
 */

/* Memory table slots: QEMU passes at most 8 regions in SET_MEM_TABLE
 * (VHOST_MEMORY_BASELINE_NREGIONS); more would be a frontend bug. */
#define PXQ_MAX_REGIONS 8

/* Largest queue size accepted: QEMU's VIRTQUEUE_MAX_SIZE. Bounds the in-flight bitmap and
 * the length of a direct chain (a chain never has more descriptors than the queue). */
#define PXQ_MAX_QUEUE_SIZE 1024

/* Largest indirect table (entries): also QEMU's limit. A bigger table is refused, so a
 * guest cannot make one request walk an unbounded amount of memory. */
#define PXQ_MAX_INDIRECT_DESCS 1024

/* Segments one chain may produce (a descriptor crossing a region boundary produces two):
 * caps the per-request segment array and the work of every gather/scatter. */
#define PXQ_MAX_SEGMENTS 1024

/* Bytes one chain may carry in each direction: 256 MiB. A guest controls every length; the
 * cap keeps totals far from 32-bit overflow and bounds what one request can make the host
 * copy. Devices split bigger transfers. */
#define PXQ_MAX_CHAIN_BYTES 268435456

/* Descriptor flags (virtio_ring.h names). */
#define PXQ_VRING_DESC_F_NEXT 1
#define PXQ_VRING_DESC_F_WRITE 2
#define PXQ_VRING_DESC_F_INDIRECT 4
#define PXQ_VRING_AVAIL_F_NO_INTERRUPT 1

struct pxq_region {
    uint64_t gpa;   /* guest-physical start */
    uint64_t size;  /* bytes */
    uint64_t qva;   /* the frontend's (QEMU's) virtual address of the start */
    uint64_t host;  /* our mapping of the start (already past mmap_offset) */
};

struct pxq_mem {
    uint32_t nregions;
    uint32_t reserved;
    struct pxq_region regions[8];   /* PXQ_MAX_REGIONS */
};

/* One contiguous piece of a chain, already inside our mapping. */
struct pxq_seg {
    uint64_t host;
    uint32_t len;
    uint16_t writable;
    uint16_t region;  /* index into pxq_mem.regions */
};

/* One popped chain: its segments are segs[first_seg .. first_seg + nsegs). Device-readable
 * segments come first (the spec requires it and the walker enforces it). */
struct pxq_chain {
    uint32_t head;
    int32_t err;          /* 0, or -errno: the chain was malformed and already completed
                             with length 0 (-EBUSY: head already in flight, skipped) */
    uint32_t first_seg;
    uint32_t nsegs;
    uint32_t nreadable;   /* segments that are device-readable */
    uint32_t readable_len;
    uint32_t writable_len;
};

struct pxq_used_elem {
    uint32_t id;
    uint32_t len;
};

struct pxq_vring {
    uint64_t desc;        /* host pointers to the three parts */
    uint64_t avail;
    uint64_t used;
    uint32_t num;         /* queue size, a power of two <= PXQ_MAX_QUEUE_SIZE */
    uint16_t last_avail;  /* next avail ring slot to read */
    uint16_t used_idx;    /* our copy of used->idx */
    uint16_t signalled_used;
    uint8_t signalled_used_valid;
    uint8_t event_idx;    /* VIRTIO_RING_F_EVENT_IDX negotiated */
    uint8_t indirect;     /* VIRTIO_RING_F_INDIRECT_DESC negotiated */
    uint8_t broken;       /* the avail ring itself is corrupt: no further pops */
    uint16_t inflight_count;
    uint64_t inflight[16];  /* PXQ_MAX_QUEUE_SIZE / 64: heads popped and not yet pushed */
};

/* Sizes in bytes of the three ring parts for a queue of num entries (event index fields
 * included), so callers can translate whole ranges. */
uint64_t pxq_desc_size(uint32_t num);
uint64_t pxq_avail_size(uint32_t num);
uint64_t pxq_used_size(uint32_t num);

/* Host address of [gpa, gpa + len) if it lies inside one region; -EFAULT otherwise. */
int pxq_translate_gpa(const struct pxq_mem *mem, uint64_t gpa, uint64_t len, uint64_t *host);
/* Same for a frontend virtual address (ring addresses in SET_VRING_ADDR). */
int pxq_translate_qva(const struct pxq_mem *mem, uint64_t qva, uint64_t len, uint64_t *host);

/* 0 when num is a valid queue size and the host pointers are non-NULL and aligned as the
 * spec asks (desc 16, avail 2, used 4 bytes); -EINVAL otherwise. */
int pxq_vring_check_addrs(uint32_t num, uint64_t desc, uint64_t avail, uint64_t used);

/* Point a running ring at a new mapping of the same guest memory (a new memory table):
 * the same checks as pxq_vring_init; on -EINVAL nothing changed. Ring state is kept. */
int pxq_vring_rebind(struct pxq_vring *vr, uint64_t desc, uint64_t avail, uint64_t used);

/* Prepare a ring: zero the state, set sizes and pointers, last_avail = used_idx = base. */
int pxq_vring_init(struct pxq_vring *vr, uint32_t num, uint64_t desc, uint64_t avail, uint64_t used,
                   uint16_t base, int event_idx, int indirect);

/* Walk the chain starting at head into segs[0..max_segs). Returns the segment count
 * (>= 1) and fills *out, or -errno. Does not touch the avail ring or in-flight state. */
int pxq_walk_chain(const struct pxq_vring *vr, const struct pxq_mem *mem, uint32_t head,
                   struct pxq_seg *segs, uint32_t max_segs, struct pxq_chain *out);

/* Pop up to max_chains chains from the avail ring (max_segs >= PXQ_MAX_SEGMENTS). Returns
 * the number of chains written (malformed ones included, with err set), or -errno when the
 * ring itself is corrupt and nothing was popped (vr->broken is then set). */
int pxq_pop(struct pxq_vring *vr, const struct pxq_mem *mem, struct pxq_chain *chains,
            uint32_t max_chains, struct pxq_seg *segs, uint32_t max_segs);

/* Put elements on the used ring: elements first, a release fence, then used->idx.
 * Returns 0 or -errno (head out of range or not in flight: nothing is written). */
int pxq_push(struct pxq_vring *vr, uint32_t head, uint32_t len);
int pxq_push_batch(struct pxq_vring *vr, const struct pxq_used_elem *elems, uint32_t n);

/* Whether the driver wants an interrupt for what was pushed since the last notify
 * (event index aware); records the notify point when it returns 1. */
int pxq_need_notify(struct pxq_vring *vr);

/* Re-arm guest kicks (avail_event = last_avail with event index) and report whether the
 * avail ring already holds more (1) so the caller pops again instead of sleeping. */
int pxq_enable_notify(struct pxq_vring *vr);

/* Number of heads the driver has made available that we have not popped yet. */
int pxq_avail_pending(const struct pxq_vring *vr);

/* Copy out of the device-readable segments from byte offset; returns bytes copied. */
uint64_t pxq_gather(const struct pxq_seg *segs, uint32_t nsegs, uint64_t offset, uint8_t *dst,
                    uint64_t len);
/* Copy into the device-writable segments from byte offset; returns bytes copied. */
uint64_t pxq_scatter(const struct pxq_seg *segs, uint32_t nsegs, uint64_t offset, const uint8_t *src,
                     uint64_t len);

/* ---- SIGBUS guard of guest memory mappings (pxq_guard.c) ---- */

/* Mappings of guest memory the guard can watch at once, daemon-wide: 8 regions per table,
 * at most 4 live tables per connection (MAX_LIVE_TABLES), so 512 VMs at their worst. */
#define PXQ_GUARD_SLOTS 16384

/* Install the process-wide SIGBUS handler (again, if someone replaced it: theirs then
 * gets every SIGBUS outside guest memory). 1 installed now, 0 already on top, -errno. */
int pxq_guard_install(void);
/* Watch the mapping [start, start + len) of fd (hugetlbfs extents are rounded up to its
 * page). Returns the slot (>= 0), -ENOSPC when every slot is taken, or -errno. A SIGBUS
 * inside it then replaces the whole mapping with zero-filled private memory and counts. */
int pxq_guard_add(uint64_t start, uint64_t len, int fd);
/* Stop watching (call it once the mapping is gone). 0, or -errno. */
int pxq_guard_remove(int slot);
/* SIGBUS faults absorbed in a slot since it was added (> 0: the memory went bad). */
int pxq_guard_faults(int slot);
/* Faults absorbed in all slots since start: a cheap "did anything go bad" check. */
uint64_t pxq_guard_events(void);
/* Slots in use. */
int pxq_guard_active(void);
