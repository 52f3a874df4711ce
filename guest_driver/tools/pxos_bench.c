// SPDX-License-Identifier: Apache-2.0
/*
 * pxos_bench.c - `pxos bench [N] [--json]`: round trips timed in the guest around each
 * ioctl (CLOCK_MONOTONIC): GET_INFO (the transport alone), an empty launch and a 32x32
 * matmul, next to the host's own figures from each LAUNCH response (total, queue, device),
 * and 1 MiB WRITEs (throughput). Either transport (--transport module|drm):
 * bench/bench_guest_transports.py runs it on both, side by side.
 * bench/bench_guest_roundtrip.py runs it and splits guest + emulator from backend time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pxos_lib.h"
#include "pxos_programs.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* 1 MiB WRITEs into one buffer: the bulk path (the module copies into its own pages; the
 * DRM transport into the EXECBUFFER). */
static int px_bench_write(int fd, int iters, int json)
{
	enum { MIB = 1 << 20 };
	struct px_type t = { PXOS_DTYPE_FLOAT32, 1, { MIB / 4 } };
	struct pxos_ioc_result res;
	uint64_t h = 0, *g = calloc((size_t)iters, 8);
	char *buf = calloc(1, MIB);
	int err = !g || !buf ? -ENOMEM : px_tensor(fd, &t, NULL, &h, &res);

	for (int i = -3; !err && i < iters; i++) {
		uint64_t t0 = px_now_ns();

		buf[i & (MIB - 1)] = (char)i;
		err = px_write(fd, h, 0, buf, MIB, &res);
		if (i >= 0)
			g[i] = px_now_ns() - t0;
	}
	if (err) {
		px_report("write_1MiB", err, &res);
	} else {
		qsort(g, (size_t)iters, 8, cmp_u64);
		printf(json ? "{\"bench\": \"write_1MiB\", \"n\": %d, \"guest_roundtrip_us_median\": %.1f, "
			      "\"guest_roundtrip_us_p90\": %.1f, \"mib_per_s\": %.1f}\n"
			    : "write_1MiB: n=%d guest round trip median %.1f us (p90 %.1f), %.1f MiB/s\n",
		       iters, g[iters / 2] / 1e3, g[iters * 9 / 10] / 1e3, 1e9 / (double)g[iters / 2]);
	}
	if (h)
		px_free(fd, h, NULL);
	free(g);
	free(buf);
	return err ? 1 : 0;
}

int px_bench(int fd, int iters, int json)
{
	if (iters < 1 || iters > 100000) {
		fprintf(stderr, "pxos: bench: 1..100000 iterations\n");
		return 2;
	}
	static const uint64_t dims[2][3] = { { 1, 1, 1 }, { 32, 32, 32 } };
	static const char *const names[2] = { "empty_launch", "matmul_32" };
	struct pxos_ioc_compile c;
	int err;

	err = px_compile(fd, px_bench_source, strlen(px_bench_source), &c);
	if (err) {
		px_report("compile bench program", err, &c.res);
		return 1;
	}
	/* The transport alone: GET_INFO goes to the device and back, no scheduling, no work. */
	{
		uint64_t *g = calloc((size_t)iters, 8);
		struct pxos_ioc_info info;

		for (int i = -3; g && !err && i < iters; i++) {
			uint64_t t0 = px_now_ns();

			err = px_info(fd, &info);
			if (i >= 0)
				g[i] = px_now_ns() - t0;
		}
		if (!g || err) {
			px_report("get_info", g ? err : -ENOMEM, g ? &info.res : NULL);
			free(g);
			return 1;
		}
		qsort(g, (size_t)iters, 8, cmp_u64);
		printf(json ? "{\"bench\": \"get_info\", \"n\": %d, \"guest_roundtrip_us_median\": %.1f, "
			      "\"guest_roundtrip_us_p90\": %.1f}\n"
			    : "get_info: n=%d guest round trip median %.1f us (p90 %.1f)\n",
		       iters, g[iters / 2] / 1e3, g[iters * 9 / 10] / 1e3);
		free(g);
	}
	for (int k = 0; k < 2; k++) {
		uint64_t *g = calloc((size_t)iters, 8), *d = calloc((size_t)iters, 8);
		uint64_t *t = calloc((size_t)iters, 8), *q = calloc((size_t)iters, 8);
		struct px_type ta = { PXOS_DTYPE_FLOAT32, 2, { dims[k][0], dims[k][1] } };
		struct px_type tb = { PXOS_DTYPE_FLOAT32, 2, { dims[k][1], dims[k][2] } };
		struct px_type tc = { PXOS_DTYPE_FLOAT32, 2, { dims[k][0], dims[k][2] } };
		struct px_type t1 = { PXOS_DTYPE_FLOAT32, 1, { 1 } };
		struct pxos_binding b[3];
		struct pxos_ioc_launch l;
		uint64_t h[3] = { 0 };
		int nb = k ? 3 : 2;

		if (k == 0) {
			err = px_tensor(fd, &t1, NULL, &h[0], NULL) || px_tensor(fd, &t1, NULL, &h[1], NULL);
			px_bind_buffer(&b[0], "x", h[0]);
			px_bind_buffer(&b[1], "y", h[1]);
		} else {
			err = px_tensor(fd, &ta, NULL, &h[0], NULL) || px_tensor(fd, &tb, NULL, &h[1], NULL) ||
			      px_tensor(fd, &tc, NULL, &h[2], NULL);
			px_bind_buffer(&b[0], "a", h[0]);
			px_bind_buffer(&b[1], "b", h[1]);
			px_bind_buffer(&b[2], "c", h[2]);
		}
		for (int i = -3; !err && i < iters; i++) { /* three warm-up launches */
			uint64_t t0 = px_now_ns();

			err = px_launch(fd, px_kernel_id(&c, k ? "mm" : "nop"), b, (uint32_t)nb, 0, &l);
			if (i >= 0) {
				g[i] = px_now_ns() - t0;
				d[i] = l.device_ns;
				q[i] = l.queue_ns;
				t[i] = l.total_ns;
			}
		}
		if (err) {
			px_report(names[k], err, &l.res);
		} else {
			qsort(g, (size_t)iters, 8, cmp_u64);
			qsort(d, (size_t)iters, 8, cmp_u64);
			qsort(q, (size_t)iters, 8, cmp_u64);
			qsort(t, (size_t)iters, 8, cmp_u64);
			printf(json ? "{\"bench\": \"%s\", \"n\": %d, \"guest_roundtrip_us_median\": %.1f, "
				      "\"guest_roundtrip_us_p90\": %.1f, \"host_total_us_median\": %.1f, "
				      "\"host_queue_us_median\": %.1f, \"host_device_us_median\": %.1f}\n"
				    : "%s: n=%d guest round trip median %.1f us (p90 %.1f), host total %.1f us, "
				      "queue %.1f us, device %.1f us\n",
			       names[k], iters, g[iters / 2] / 1e3, g[iters * 9 / 10] / 1e3, t[iters / 2] / 1e3,
			       q[iters / 2] / 1e3, d[iters / 2] / 1e3);
		}
		for (int i = 0; i < 3; i++)
			if (h[i])
				px_free(fd, h[i], NULL);
		free(g), free(d), free(t), free(q);
		if (err)
			return 1;
	}
	return px_bench_write(fd, iters, json);
}

/*
 * `pxos load SECONDS [--depth D] [--size N]`: keep D launches of an NxN matmul in flight
 * for SECONDS (submit, poll, reap, resubmit), so the VM always has work queued: what the
 * scheduler's shares are measured against. One summary line; nonzero exit on any failure.
 */
#define PX_LOAD_MAX_DEPTH 32

int px_load(int fd, int seconds, int depth, int size)
{
	struct px_type ta = { PXOS_DTYPE_FLOAT32, 2, { (uint64_t)size, (uint64_t)size } };
	struct pxos_binding b[PX_LOAD_MAX_DEPTH][3];
	uint64_t ha = 0, hc[PX_LOAD_MAX_DEPTH] = { 0 }, tok[PX_LOAD_MAX_DEPTH] = { 0 };
	uint64_t launches = 0, failed = 0, device_ns = 0, t_end;
	struct pxos_ioc_compile c;
	struct pxos_ioc_result res;
	struct pxos_ioc_reap r;
	double *fill;
	int err, inflight = 0, rc = 1;

	if (seconds < 1 || depth < 1 || depth > PX_LOAD_MAX_DEPTH || size < 1 || size > 4096) {
		fprintf(stderr, "pxos: load: 1 <= depth <= %d, 1 <= size <= 4096\n", PX_LOAD_MAX_DEPTH);
		return 2;
	}
	err = px_compile(fd, px_bench_source, strlen(px_bench_source), &c);
	if (err) {
		px_report("compile load program", err, &c.res);
		return 1;
	}
	fill = calloc((size_t)size * (size_t)size, sizeof(double));
	for (int i = 0; fill && i < size * size; i++)
		fill[i] = (double)(i % 7) / 7.0;
	err = fill ? px_tensor(fd, &ta, fill, &ha, &res) : -ENOMEM;
	free(fill);
	for (int i = 0; !err && i < depth; i++) {
		err = px_tensor(fd, &ta, NULL, &hc[i], &res);
		px_bind_buffer(&b[i][0], "a", ha);
		px_bind_buffer(&b[i][1], "b", ha);
		px_bind_buffer(&b[i][2], "c", hc[i]);
	}
	if (err) {
		px_report("load: buffers", err, &res);
		goto out;
	}
	t_end = px_now_ns() + (uint64_t)seconds * 1000000000ull;
	for (int i = 0; i < depth; i++) {
		err = px_submit(fd, px_kernel_id(&c, "mm"), b[i], 3, &tok[i], &res);
		if (err) {
			px_report("load: submit", err, &res);
			goto out;
		}
		inflight++;
	}
	while (inflight > 0) {
		err = px_reap(fd, 0, 1, &r);
		if (err && err != -EIO && err != -EINVAL && err != -ECANCELED) {
			px_report("load: reap", err, &r.res);
			goto out;
		}
		inflight--;
		launches++;
		failed += err != 0;
		device_ns += r.device_ns;
		if (px_now_ns() < t_end) {
			int i = 0;

			while (i < depth && tok[i] != r.token)
				i++;
			if (i == depth)
				goto out;
			err = px_submit(fd, px_kernel_id(&c, "mm"), b[i], 3, &tok[i], &res);
			if (err) {
				px_report("load: submit", err, &res);
				goto out;
			}
			inflight++;
		}
	}
	printf("load: %llu launches of matmul %dx%d in %d s (depth %d), %llu failed, device %.2f ms mean\n",
	       (unsigned long long)launches, size, size, seconds, depth, (unsigned long long)failed,
	       launches ? device_ns / 1e6 / (double)launches : 0.0);
	rc = failed ? 1 : 0;
out:
	if (ha)
		px_free(fd, ha, NULL);
	for (int i = 0; i < depth; i++)
		if (hc[i])
			px_free(fd, hc[i], NULL);
	return rc;
}
