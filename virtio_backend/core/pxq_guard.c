// SPDX-License-Identifier: Apache-2.0
/*
 * pxq_guard.c - guest memory that shrinks under its mapping must not kill the daemon.
 *
 * A front-end shares guest RAM as a file (memfd, tmpfs, hugetlbfs). If it truncates the
 * file after SET_MEM_TABLE (or a sparse file cannot get a page: a full tmpfs, an empty
 * hugetlb pool), the next access to a page past the end raises SIGBUS, and the default
 * action ends the whole process with every VM in it. Sealing (F_SEAL_SHRINK) prevents
 * the truncation where the fd allows it; this guard handles every other case, for every
 * access, whoever makes it: the C core's ring walks and copies, NumPy copies from a
 * memoryview, a GPU executor filling its staging buffer.
 *
 * Design: each mapping of guest memory is registered in a fixed table of slots. A
 * process-wide SIGBUS handler looks the faulting address up; inside a registered mapping
 * it replaces the whole mapping with private anonymous memory (mmap MAP_FIXED), counts
 * the fault and returns, so the faulting instruction runs again on zero-filled memory
 * and the copy finishes. The mapping's owner sees the count go up and resets that VM;
 * nothing that VM's memory held ever reaches another VM, and no other mapping changes.
 * A SIGBUS anywhere else goes to the handler that was installed before (Python's
 * faulthandler prints its traceback) and then to the default action: the process ends
 * as it would have without the guard.
 *
 * Why not sigsetjmp/siglongjmp around each copy: that covers only copies made by this
 * file's own code, while guest memory is also read by NumPy and executor copies through
 * memoryviews on other threads. Remapping needs no cooperation from the code that faults.
 *
 * The handler uses only atomics and raw system calls (mmap, sched_yield, sigaction,
 * raise); slots change with compare-and-swap, so it never waits on a lock a thread it
 * interrupted might hold. A slot being fixed cannot be removed until the fix is done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "pxq_core.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

enum pxq_slot_state {
    PXQ_SLOT_FREE = 0,
    PXQ_SLOT_CLAIMED,   /* being filled or emptied by its owner */
    PXQ_SLOT_ACTIVE,    /* a live mapping: the handler may fix it */
    PXQ_SLOT_FIXING,    /* the handler is replacing it right now */
};

struct pxq_slot {
    uint64_t start;
    uint64_t len;
    uint32_t faults;
    int state;
};

static struct pxq_slot pxq_slots[PXQ_GUARD_SLOTS];
static uint64_t pxq_events;
static int pxq_chained; /* foreign SIGBUSes handed on so far */
static struct sigaction pxq_prev;
static pthread_mutex_t pxq_install_lock = PTHREAD_MUTEX_INITIALIZER;

static int slot_state(const struct pxq_slot *s)
{
    return __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
}

static int slot_cas(struct pxq_slot *s, int from, int to)
{
    return __atomic_compare_exchange_n(&s->state, &from, to, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static int inside(uint64_t addr, uint64_t start, uint64_t len)
{
    return addr >= start && addr - start < len;
}

/* The default action for a SIGBUS: a fault repeats when the handler returns and ends the
 * process as it would have without us; a sent signal is raised again (delivered on return). */
static void default_action(int sig, siginfo_t *si)
{
    struct sigaction dfl;

    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

/* Hand a SIGBUS that is not ours to whoever had it before, once; any later one goes to
 * the default action. Once, because a previous handler may itself chain back to us (Python's
 * faulthandler restores the handler it found, which can be ours, and raises again): a
 * foreign SIGBUS is fatal in this daemon, and it must end it, never loop. */
static void chain(int sig, siginfo_t *si, void *uc)
{
    struct sigaction prev = pxq_prev;

    if (__atomic_fetch_add(&pxq_chained, 1, __ATOMIC_ACQ_REL) == 0) {
        if (prev.sa_flags & SA_SIGINFO) {
            if (prev.sa_sigaction)
                prev.sa_sigaction(sig, si, uc);
            return;
        }
        if (prev.sa_handler == SIG_IGN && si->si_code <= 0)
            return; /* a sent SIGBUS, ignored before we came */
        if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
            prev.sa_handler(sig);
            return;
        }
    }
    default_action(sig, si);
}

/* Replace the slot's whole mapping with zero-filled private memory. */
static int fix_slot(struct pxq_slot *s)
{
    void *p = mmap((void *)(uintptr_t)s->start, s->len, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);

    if (p == MAP_FAILED)
        return -1;
    __atomic_add_fetch(&s->faults, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&pxq_events, 1, __ATOMIC_RELEASE);
    return 0;
}

static void pxq_guard_handler(int sig, siginfo_t *si, void *uc)
{
    uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
    int saved_errno = errno;
    uint32_t i;

    if (si->si_code <= 0) /* sent with kill()/raise(): not a fault in our memory */
        goto out_chain;
    for (i = 0; i < PXQ_GUARD_SLOTS; i++) {
        struct pxq_slot *s = &pxq_slots[i];
        int fixed;

        if (slot_state(s) == PXQ_SLOT_FREE)
            continue;
        /* Unlocked look first (may be torn by a concurrent add/remove), then confirm. */
        if (!inside(addr, __atomic_load_n(&s->start, __ATOMIC_RELAXED),
                __atomic_load_n(&s->len, __ATOMIC_RELAXED)))
            continue;
        if (!slot_cas(s, PXQ_SLOT_ACTIVE, PXQ_SLOT_FIXING)) {
            if (slot_state(s) != PXQ_SLOT_FIXING)
                continue; /* being added or removed: not a live mapping */
            /* Another thread faulted in the same mapping and is fixing it: wait, then
             * let the access run again on the replacement. */
            while (slot_state(s) == PXQ_SLOT_FIXING)
                sched_yield();
            errno = saved_errno;
            return;
        }
        if (!inside(addr, s->start, s->len)) {
            __atomic_store_n(&s->state, PXQ_SLOT_ACTIVE, __ATOMIC_RELEASE);
            continue;
        }
        fixed = fix_slot(s) == 0;
        __atomic_store_n(&s->state, PXQ_SLOT_ACTIVE, __ATOMIC_RELEASE);
        if (!fixed)
            break; /* cannot replace it: the process dies as it would have */
        errno = saved_errno;
        return;
    }
out_chain:
    chain(sig, si, uc);
    errno = saved_errno;
}

int pxq_guard_install(void)
{
    struct sigaction cur, act;
    int rc = 0;

    pthread_mutex_lock(&pxq_install_lock);
    if (sigaction(SIGBUS, NULL, &cur)) {
        rc = -errno;
        goto out_unlock;
    }
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == pxq_guard_handler)
        goto out_unlock; /* already on top */
    memset(&act, 0, sizeof(act));
    act.sa_sigaction = pxq_guard_handler;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&act.sa_mask);
    /* Whoever was on top (the default, or e.g. Python's faulthandler enabled after us)
     * now gets the SIGBUSes that are not in guest memory. */
    pxq_prev = cur;
    if (sigaction(SIGBUS, &act, NULL)) {
        rc = -errno;
        goto out_unlock;
    }
    rc = 1;
out_unlock:
    pthread_mutex_unlock(&pxq_install_lock);
    return rc;
}

/* The extent the kernel gave a mapping of fd: hugetlbfs rounds up to its page size. */
static uint64_t mapped_len(uint64_t len, int fd)
{
    struct statfs sfs;
    struct stat st;
    uint64_t page;

    if (fd < 0 || fstatfs(fd, &sfs) || (uint32_t)sfs.f_type != HUGETLBFS_MAGIC || fstat(fd, &st))
        return len;
    page = (uint64_t)st.st_blksize; /* hugetlbfs reports its huge page size here */
    if (!page || (page & (page - 1)))
        return len;
    return (len + page - 1) & ~(page - 1);
}

int pxq_guard_add(uint64_t start, uint64_t len, int fd)
{
    int rc;
    uint32_t i;

    if (!start || !len || start + len < start)
        return -EINVAL;
    rc = pxq_guard_install();
    if (rc < 0)
        return rc;
    len = mapped_len(len, fd);
    for (i = 0; i < PXQ_GUARD_SLOTS; i++) {
        struct pxq_slot *s = &pxq_slots[i];

        if (!slot_cas(s, PXQ_SLOT_FREE, PXQ_SLOT_CLAIMED))
            continue;
        __atomic_store_n(&s->start, start, __ATOMIC_RELAXED);
        __atomic_store_n(&s->len, len, __ATOMIC_RELAXED);
        __atomic_store_n(&s->faults, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->state, PXQ_SLOT_ACTIVE, __ATOMIC_RELEASE);
        return (int)i;
    }
    return -ENOSPC;
}

int pxq_guard_remove(int slot)
{
    struct pxq_slot *s;

    if (slot < 0 || slot >= PXQ_GUARD_SLOTS)
        return -EINVAL;
    s = &pxq_slots[slot];
    for (;;) {
        if (slot_cas(s, PXQ_SLOT_ACTIVE, PXQ_SLOT_CLAIMED))
            break;
        if (slot_state(s) != PXQ_SLOT_FIXING)
            return -ENOENT;
        sched_yield(); /* a fault is being fixed: it takes one system call */
    }
    __atomic_store_n(&s->start, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->len, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->state, PXQ_SLOT_FREE, __ATOMIC_RELEASE);
    return 0;
}

int pxq_guard_faults(int slot)
{
    if (slot < 0 || slot >= PXQ_GUARD_SLOTS)
        return -EINVAL;
    return (int)__atomic_load_n(&pxq_slots[slot].faults, __ATOMIC_ACQUIRE);
}

uint64_t pxq_guard_events(void)
{
    return __atomic_load_n(&pxq_events, __ATOMIC_ACQUIRE);
}

int pxq_guard_active(void)
{
    int n = 0;
    uint32_t i;

    for (i = 0; i < PXQ_GUARD_SLOTS; i++)
        n += slot_state(&pxq_slots[i]) != PXQ_SLOT_FREE;
    return n;
}
