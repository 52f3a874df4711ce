// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_data.c - bounce data of one request: page chunks (up to PXOS_SEG_MAX_ORDER, falling
 * back to smaller orders) filled from or copied to user space. Kernel pages rather than
 * pinned user pages: the device may finish a request after its caller gave up, and then
 * only memory the driver owns may still be written.
 */
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/uaccess.h>

#include "pxos_drv.h"

void pxos_data_free(struct pxos_data *data)
{
	unsigned int i;

	for (i = 0; i < data->nsegs; i++)
		__free_pages(data->page[i], data->order[i]);
	data->nsegs = 0;
	data->len = 0;
}

/* Chunks covering up to `want` bytes; may cover less when memory is short. */
int pxos_data_alloc(struct pxos_data *data, size_t want)
{
	unsigned int order = PXOS_SEG_MAX_ORDER;
	size_t have = 0;

	want = min(want, PXOS_REQ_DATA_MAX);
	while (have < want && data->nsegs < PXOS_MAX_SEGS) {
		struct page *page;

		while (order > 0 && (PAGE_SIZE << (order - 1)) >= want - have)
			order--;
		page = alloc_pages(GFP_KERNEL | __GFP_NOWARN | (order ? __GFP_NORETRY : 0), order);
		if (!page) {
			if (order == 0)
				break;
			order--;
			continue;
		}
		data->page[data->nsegs] = page;
		data->order[data->nsegs] = order;
		data->nsegs++;
		have += PAGE_SIZE << order;
	}
	data->len = min(have, want);
	return data->len ? 0 : -ENOMEM;
}

int pxos_data_from_user(struct pxos_data *data, const void __user *src)
{
	size_t off = 0;
	unsigned int i;

	for (i = 0; i < data->nsegs && off < data->len; i++) {
		size_t n = min(PAGE_SIZE << data->order[i], data->len - off);

		if (copy_from_user(page_address(data->page[i]), src + off, n))
			return -EFAULT;
		off += n;
	}
	return 0;
}

int pxos_data_to_user(const struct pxos_data *data, void __user *dst, size_t len)
{
	size_t off = 0;
	unsigned int i;

	len = min(len, data->len);
	for (i = 0; i < data->nsegs && off < len; i++) {
		size_t n = min(PAGE_SIZE << data->order[i], len - off);

		if (copy_to_user(dst + off, page_address(data->page[i]), n))
			return -EFAULT;
		off += n;
	}
	return 0;
}
