// SPDX-License-Identifier: Apache-2.0
/*
 * pxq_core.c - split virtqueues for pxOS's vhost-user backend (see pxq_core.h).
 *
 * Follows virtio 1.2 section 2.7 (split virtqueues) and the memory model of
 * Linux's virtio_ring.h: the driver publishes avail->idx after the ring entry (we load it
 * with acquire), we publish used->idx after the used element and the data (store release),
 * and a full fence separates our used->idx store from reading the driver's used_event.
 *
 * The guest can change any byte of its memory at any time, so each descriptor field is
 * loaded exactly once (READ_ONCE) and only the local copy is checked and used.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pxq_core.h"

#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

/* The guest's view of the rings (virtio_ring.h layout, little-endian on our hosts). */
struct pxq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct pxq_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[]; /* num entries, then used_event */
};

struct pxq_used {
    uint16_t flags;
    uint16_t idx;
    struct pxq_used_elem ring[]; /* num entries, then avail_event (uint16_t) */
};

uint64_t pxq_desc_size(uint32_t num)
{
    return (uint64_t)num * sizeof(struct pxq_desc);
}

uint64_t pxq_avail_size(uint32_t num)
{
    return 4 + 2 * (uint64_t)num + 2;
}

uint64_t pxq_used_size(uint32_t num)
{
    return 4 + 8 * (uint64_t)num + 2;
}

static inline struct pxq_desc *ring_desc(const struct pxq_vring *vr)
{
    return (struct pxq_desc *)(uintptr_t)vr->desc;
}

static inline struct pxq_avail *ring_avail(const struct pxq_vring *vr)
{
    return (struct pxq_avail *)(uintptr_t)vr->avail;
}

static inline struct pxq_used *ring_used(const struct pxq_vring *vr)
{
    return (struct pxq_used *)(uintptr_t)vr->used;
}

static inline uint16_t *used_event_slot(const struct pxq_vring *vr)
{
    return &ring_avail(vr)->ring[vr->num];
}

static inline uint16_t *avail_event_slot(const struct pxq_vring *vr)
{
    return (uint16_t *)&ring_used(vr)->ring[vr->num];
}

/* Overflow-safe: [start, start + len) inside [base, base + size). */
static inline int range_inside(uint64_t start, uint64_t len, uint64_t base, uint64_t size)
{
    uint64_t off;

    if (start < base)
        return 0;
    off = start - base;
    return off < size && len <= size - off;
}

int pxq_translate_gpa(const struct pxq_mem *mem, uint64_t gpa, uint64_t len, uint64_t *host)
{
    uint32_t i;

    for (i = 0; i < mem->nregions && i < PXQ_MAX_REGIONS; i++) {
        const struct pxq_region *r = &mem->regions[i];

        if (range_inside(gpa, len, r->gpa, r->size)) {
            *host = r->host + (gpa - r->gpa);
            return 0;
        }
    }
    return -EFAULT;
}

int pxq_translate_qva(const struct pxq_mem *mem, uint64_t qva, uint64_t len, uint64_t *host)
{
    uint32_t i;

    for (i = 0; i < mem->nregions && i < PXQ_MAX_REGIONS; i++) {
        const struct pxq_region *r = &mem->regions[i];

        if (range_inside(qva, len, r->qva, r->size)) {
            *host = r->host + (qva - r->qva);
            return 0;
        }
    }
    return -EFAULT;
}

int pxq_vring_check_addrs(uint32_t num, uint64_t desc, uint64_t avail, uint64_t used)
{
    if (num == 0 || num > PXQ_MAX_QUEUE_SIZE || (num & (num - 1)))
        return -EINVAL;
    /* Alignments from the spec's table (2.7): 16, 2 and 4 bytes. */
    if (!desc || !avail || !used || (desc & 15) || (avail & 1) || (used & 3))
        return -EINVAL;
    return 0;
}

int pxq_vring_init(struct pxq_vring *vr, uint32_t num, uint64_t desc, uint64_t avail, uint64_t used,
                   uint16_t base, int event_idx, int indirect)
{
    int rc;

    memset(vr, 0, sizeof(*vr));
    rc = pxq_vring_check_addrs(num, desc, avail, used);
    if (rc)
        return rc;
    vr->num = num;
    vr->desc = desc;
    vr->avail = avail;
    vr->used = used;
    vr->last_avail = base;
    vr->used_idx = base;
    vr->signalled_used = base; /* not valid yet: the first interrupt is never suppressed */
    vr->event_idx = event_idx ? 1 : 0;
    vr->indirect = indirect ? 1 : 0;
    return 0;
}

int pxq_vring_rebind(struct pxq_vring *vr, uint64_t desc, uint64_t avail, uint64_t used)
{
    int rc = pxq_vring_check_addrs(vr->num, desc, avail, used);

    if (rc)
        return rc; /* nothing changed */
    vr->desc = desc;
    vr->avail = avail;
    vr->used = used;
    return 0;
}

/* Append the host pieces of [gpa, gpa + len): one per region it crosses. */
static int map_range(const struct pxq_mem *mem, uint64_t gpa, uint64_t len, uint16_t writable,
                     struct pxq_seg *segs, uint32_t *nsegs, uint32_t max_segs)
{
    while (len) {
        const struct pxq_region *r = NULL;
        uint64_t off, piece;
        uint32_t i;

        for (i = 0; i < mem->nregions && i < PXQ_MAX_REGIONS; i++) {
            if (range_inside(gpa, 1, mem->regions[i].gpa, mem->regions[i].size)) {
                r = &mem->regions[i];
                break;
            }
        }
        if (!r)
            return -EFAULT;
        if (*nsegs >= max_segs)
            return -E2BIG;
        off = gpa - r->gpa;
        piece = r->size - off;
        if (piece > len)
            piece = len;
        segs[*nsegs].host = r->host + off;
        segs[*nsegs].len = (uint32_t)piece; /* piece <= len <= UINT32_MAX */
        segs[*nsegs].writable = writable;
        segs[*nsegs].region = (uint16_t)i;
        (*nsegs)++;
        gpa += piece; /* cannot wrap: the region ends at or below 2^64 (checked on mapping) */
        len -= piece;
    }
    return 0;
}

int pxq_walk_chain(const struct pxq_vring *vr, const struct pxq_mem *mem, uint32_t head,
                   struct pxq_seg *segs, uint32_t max_segs, struct pxq_chain *out)
{
    const struct pxq_desc *table = ring_desc(vr);
    uint32_t table_num = vr->num, budget = vr->num, idx = head, nsegs = 0, nreadable = 0;
    uint64_t rlen = 0, wlen = 0;
    int in_indirect = 0, seen_writable = 0, rc;

    memset(out, 0, sizeof(*out));
    out->head = head;
    if (!vr->num || head >= vr->num)
        return -ERANGE;

    for (;;) {
        uint64_t addr, host;
        uint32_t len;
        uint16_t flags, next;

        /* Loops and over-long chains: never visit more descriptors than the table has. */
        if (budget == 0)
            return -ELOOP;
        budget--;
        addr = READ_ONCE(table[idx].addr);
        len = READ_ONCE(table[idx].len);
        flags = READ_ONCE(table[idx].flags);
        next = READ_ONCE(table[idx].next);

        if (flags & PXQ_VRING_DESC_F_INDIRECT) {
            /* Only the head, alone, may point at a table; never nested (spec 2.7.5.3.1). */
            if (!vr->indirect || in_indirect || idx != head || (flags & PXQ_VRING_DESC_F_NEXT))
                return -EINVAL;
            if (len == 0 || len % sizeof(struct pxq_desc) ||
                len / sizeof(struct pxq_desc) > PXQ_MAX_INDIRECT_DESCS)
                return -EINVAL;
            rc = pxq_translate_gpa(mem, addr, len, &host);
            if (rc)
                return rc;
            if (host & 7) /* each field must be naturally aligned for single loads */
                return -EINVAL;
            table = (const struct pxq_desc *)(uintptr_t)host;
            table_num = len / sizeof(struct pxq_desc);
            budget = table_num;
            idx = 0;
            in_indirect = 1;
            continue;
        }
        if (len == 0)
            return -EINVAL; /* QEMU refuses zero-sized buffers too */
        if (flags & PXQ_VRING_DESC_F_WRITE) {
            seen_writable = 1;
            wlen += len;
            if (wlen > PXQ_MAX_CHAIN_BYTES)
                return -EFBIG;
        } else {
            if (seen_writable)
                return -EINVAL; /* readable after writable: wrong order */
            rlen += len;
            if (rlen > PXQ_MAX_CHAIN_BYTES)
                return -EFBIG;
        }
        rc = map_range(mem, addr, len, (flags & PXQ_VRING_DESC_F_WRITE) ? 1 : 0, segs, &nsegs, max_segs);
        if (rc)
            return rc;
        if (!seen_writable)
            nreadable = nsegs;
        if (!(flags & PXQ_VRING_DESC_F_NEXT))
            break;
        if (next >= table_num)
            return -ERANGE;
        idx = next;
    }
    out->nsegs = nsegs;
    out->nreadable = nreadable;
    out->readable_len = (uint32_t)rlen;
    out->writable_len = (uint32_t)wlen;
    return (int)nsegs;
}

static inline int inflight_test(const struct pxq_vring *vr, uint32_t head)
{
    return (vr->inflight[head / 64] >> (head % 64)) & 1;
}

static inline void inflight_set(struct pxq_vring *vr, uint32_t head)
{
    vr->inflight[head / 64] |= 1ull << (head % 64);
    vr->inflight_count++;
}

static inline void inflight_clear(struct pxq_vring *vr, uint32_t head)
{
    vr->inflight[head / 64] &= ~(1ull << (head % 64));
    vr->inflight_count--;
}

static inline void used_write_elem(struct pxq_vring *vr, uint32_t head, uint32_t len)
{
    struct pxq_used_elem *e = &ring_used(vr)->ring[vr->used_idx & (vr->num - 1)];

    WRITE_ONCE(e->id, head);
    WRITE_ONCE(e->len, len);
    vr->used_idx++;
}

static inline void used_publish(struct pxq_vring *vr)
{
    /* Release: the element and every byte written into the buffers come before idx. */
    __atomic_store_n(&ring_used(vr)->idx, vr->used_idx, __ATOMIC_RELEASE);
}

int pxq_pop(struct pxq_vring *vr, const struct pxq_mem *mem, struct pxq_chain *chains,
            uint32_t max_chains, struct pxq_seg *segs, uint32_t max_segs)
{
    struct pxq_avail *avail = ring_avail(vr);
    uint32_t n = 0, seg_used = 0, completed = 0;
    uint16_t avail_idx;

    if (vr->broken)
        return -EIO;
    if (!vr->num || max_segs < PXQ_MAX_SEGMENTS)
        return -EINVAL;
    /* Acquire: ring entries and descriptors are read after the index that published them. */
    avail_idx = __atomic_load_n(&avail->idx, __ATOMIC_ACQUIRE);
    if ((uint16_t)(avail_idx - vr->last_avail) > vr->num) {
        vr->broken = 1; /* the driver claims more heads than the ring holds */
        return -EPROTO;
    }
    while (n < max_chains && vr->last_avail != avail_idx) {
        struct pxq_chain *c = &chains[n];
        uint32_t head = READ_ONCE(avail->ring[vr->last_avail & (vr->num - 1)]);
        int rc;

        if (max_segs - seg_used < PXQ_MAX_SEGMENTS)
            break; /* no room for a worst-case chain: the caller pops again */
        if (head >= vr->num) {
            vr->broken = 1; /* cannot even complete it: the ring is corrupt */
            if (n == 0)
                return -ERANGE;
            break;
        }
        vr->last_avail++;
        n++;
        if (inflight_test(vr, head)) {
            /* The driver re-offered a head we still hold: completing it would complete
             * the original too, so skip it. Also keeps in-flight <= queue size. */
            memset(c, 0, sizeof(*c));
            c->head = head;
            c->err = -EBUSY;
            continue;
        }
        rc = pxq_walk_chain(vr, mem, head, segs + seg_used, PXQ_MAX_SEGMENTS, c);
        c->first_seg = seg_used;
        if (rc < 0) {
            c->err = rc;
            c->nsegs = c->nreadable = c->readable_len = c->writable_len = 0;
            used_write_elem(vr, head, 0); /* give the buffers back, nothing written */
            completed++;
            continue;
        }
        c->err = 0;
        inflight_set(vr, head);
        seg_used += (uint32_t)rc;
    }
    if (completed)
        used_publish(vr);
    return (int)n;
}

int pxq_push(struct pxq_vring *vr, uint32_t head, uint32_t len)
{
    if (!vr->num || head >= vr->num || !inflight_test(vr, head))
        return -EINVAL;
    inflight_clear(vr, head);
    used_write_elem(vr, head, len);
    used_publish(vr);
    return 0;
}

int pxq_push_batch(struct pxq_vring *vr, const struct pxq_used_elem *elems, uint32_t n)
{
    uint32_t i;

    if (!vr->num)
        return -EINVAL;
    for (i = 0; i < n; i++) {
        if (elems[i].id >= vr->num || !inflight_test(vr, elems[i].id))
            goto err_restore;
        inflight_clear(vr, elems[i].id); /* also catches a head twice in one batch */
    }
    for (i = 0; i < n; i++)
        used_write_elem(vr, elems[i].id, elems[i].len);
    if (n)
        used_publish(vr);
    return 0;

err_restore:
    while (i--)
        inflight_set(vr, elems[i].id);
    return -EINVAL;
}

int pxq_need_notify(struct pxq_vring *vr)
{
    uint16_t old = vr->signalled_used, now = vr->used_idx, event;
    int had_old = vr->signalled_used_valid;

    if (!vr->num)
        return 0;
    /* Full fence: our used->idx store must be visible before we read the driver's
     * suppression fields, or both sides could decide the other one will act. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (old == now)
        return 0; /* nothing pushed since the last interrupt (or since start) */
    vr->signalled_used = now;
    vr->signalled_used_valid = 1;
    if (!vr->event_idx)
        return !(READ_ONCE(ring_avail(vr)->flags) & PXQ_VRING_AVAIL_F_NO_INTERRUPT);
    if (!had_old)
        return 1;
    event = READ_ONCE(*used_event_slot(vr));
    /* vring_need_event: did we pass used_event since the last interrupt? */
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

int pxq_enable_notify(struct pxq_vring *vr)
{
    uint16_t avail_idx;

    if (!vr->num || vr->broken)
        return 0;
    if (vr->event_idx)
        WRITE_ONCE(*avail_event_slot(vr), vr->last_avail);
    else
        WRITE_ONCE(ring_used(vr)->flags, 0); /* we never set VRING_USED_F_NO_NOTIFY */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    avail_idx = __atomic_load_n(&ring_avail(vr)->idx, __ATOMIC_ACQUIRE);
    return avail_idx != vr->last_avail;
}

int pxq_avail_pending(const struct pxq_vring *vr)
{
    if (!vr->num)
        return 0;
    return (uint16_t)(__atomic_load_n(&ring_avail(vr)->idx, __ATOMIC_ACQUIRE) - vr->last_avail);
}

uint64_t pxq_gather(const struct pxq_seg *segs, uint32_t nsegs, uint64_t offset, uint8_t *dst,
                    uint64_t len)
{
    uint64_t done = 0;
    uint32_t i;

    for (i = 0; i < nsegs && done < len; i++) {
        uint64_t take;

        if (offset >= segs[i].len) {
            offset -= segs[i].len;
            continue;
        }
        take = segs[i].len - offset;
        if (take > len - done)
            take = len - done;
        memcpy(dst + done, (const uint8_t *)(uintptr_t)segs[i].host + offset, take);
        done += take;
        offset = 0;
    }
    return done;
}

uint64_t pxq_scatter(const struct pxq_seg *segs, uint32_t nsegs, uint64_t offset, const uint8_t *src,
                     uint64_t len)
{
    uint64_t done = 0;
    uint32_t i;

    for (i = 0; i < nsegs && done < len; i++) {
        uint64_t take;

        if (offset >= segs[i].len) {
            offset -= segs[i].len;
            continue;
        }
        take = segs[i].len - offset;
        if (take > len - done)
            take = len - done;
        memcpy((uint8_t *)(uintptr_t)segs[i].host + offset, src + done, take);
        done += take;
        offset = 0;
    }
    return done;
}
