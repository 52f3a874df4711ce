// SPDX-License-Identifier: Apache-2.0
/*
 * pxos_selftest.c - `pxos selftest` and `pxos workload`: run primitives on the device and
 * check every result against a reference computed here, in C, in the guest. One line per
 * check, then "selftest: P/N passed"; the exit status is nonzero when any check failed.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pxos_check.h"
#include "pxos_programs.h"

#define PX_ASYNC 48               /* submits in flight at once in the async check */
#define PX_BIG_FLOATS (786432)    /* 3 MiB of float32: more than one request */

static int check_info(struct px_ctx *c)
{
	struct pxos_ioc_info info;
	int err = px_info(c->fd, &info);

	if (err)
		return px_fail(c, "info", err, &info.res);
	if (info.abi_major != PXOS_ABI_MAJOR || info.ioctl_version != PXOS_IOCTL_VERSION) {
		snprintf(c->detail, PX_DETAIL, "ABI %u.%u ioctl v%u", info.abi_major, info.abi_minor,
			 info.ioctl_version);
		return 0;
	}
	snprintf(c->detail, PX_DETAIL, "vm %u, session %u, %s on %s", info.vm_id, info.session_id,
		 info.backend, info.device_name);
	return 1;
}

static int check_transfer(struct px_ctx *c)
{
	struct px_type t = px_f32(1, PX_BIG_FLOATS, 0);
	struct pxos_ioc_result res;
	uint32_t *out, *in = malloc(PX_BIG_FLOATS * 4);
	uint64_t h = 0;
	int err, ok = 0;

	out = malloc(PX_BIG_FLOATS * 4);
	if (!in || !out) {
		free(in);
		free(out);
		return px_fail(c, "malloc", -ENOMEM, NULL);
	}
	for (uint32_t i = 0; i < PX_BIG_FLOATS; i++)
		in[i] = i * 2654435761u;
	memset(out, 0, PX_BIG_FLOATS * 4);
	err = px_alloc(c->fd, &t, &h, &res);
	if (!err)
		err = px_write(c->fd, h, 0, in, PX_BIG_FLOATS * 4, &res);
	if (!err)
		err = px_read(c->fd, h, 0, out, PX_BIG_FLOATS * 4, &res);
	if (err)
		px_fail(c, "3 MiB write/read", err, &res);
	else if (memcmp(in, out, PX_BIG_FLOATS * 4))
		snprintf(c->detail, PX_DETAIL, "3 MiB read back differs from what was written");
	else
		ok = 1, snprintf(c->detail, PX_DETAIL, "%d bytes written and read back", PX_BIG_FLOATS * 4);
	if (h)
		px_free(c->fd, h, NULL);
	free(in);
	free(out);
	return ok;
}

static int check_compile_error(struct px_ctx *c)
{
	struct pxos_ioc_compile bad;
	int err = px_compile(c->fd, px_bad_source, strlen(px_bad_source), &bad);

	if (err != -EBADMSG || bad.res.status != PXOS_S_COMPILE || bad.ndiags < 1) {
		snprintf(c->detail, PX_DETAIL, "bad program: %s, status %s, %u diagnostics",
			 strerror(-err), px_status_name(bad.res.status), bad.ndiags);
		return 0;
	}
	snprintf(c->detail, PX_DETAIL, "line %u:%u %s: %s", bad.diags[0].line, bad.diags[0].column,
		 bad.diags[0].code, bad.diags[0].message);
	return bad.diags[0].line == PX_BAD_LINE;
}

static int check_matmul_known(struct px_ctx *c)
{
	static const double a[6] = { 1, 2, 3, 4, 5, 6 }, b[6] = { 7, 8, 9, 10, 11, 12 };
	static const double want[4] = { 58, 64, 139, 154 };
	double got[4];
	struct px_arg args[] = {
		{ "a", px_f32(2, 2, 3), a, NULL, 0 }, { "b", px_f32(2, 3, 2), b, NULL, 0 },
		{ "c", px_f32(2, 2, 2), NULL, got, 0 },
	};

	return px_run(c, "mm", args, 3, 0, NULL) && px_close(c, got, want, 4, 0.0);
}

static int check_matmul_random(struct px_ctx *c)
{
	enum { M = 16, K = 32, N = 8 };
	double a[M * K], b[K * N], got[M * N], want[M * N];
	struct px_arg args[] = {
		{ "a", px_f32(2, M, K), a, NULL, 0 }, { "b", px_f32(2, K, N), b, NULL, 0 },
		{ "c", px_f32(2, M, N), NULL, got, 0 },
	};

	px_fill(c, a, M * K);
	px_fill(c, b, K * N);
	px_ref_matmul(a, b, want, M, K, N);
	return px_run(c, "mm", args, 3, 0, NULL) && px_close(c, got, want, M * N, 1e-4);
}

static int check_mlp(struct px_ctx *c)
{
	enum { B = 8, I = 16, O = 4 };
	double x[B * I], w[I * O], bias[O], got[B * O], want[B * O];
	struct px_arg args[] = {
		{ "x", px_f32(2, B, I), x, NULL, 0 }, { "w", px_f32(2, I, O), w, NULL, 0 },
		{ "bias", px_f32(1, O, 0), bias, NULL, 0 }, { "y", px_f32(2, B, O), NULL, got, 0 },
	};

	px_fill(c, x, B * I);
	px_fill(c, w, I * O);
	px_fill(c, bias, O);
	px_ref_matmul(x, w, want, B, I, O);
	for (int i = 0; i < B * O; i++)
		want[i] = fmax(want[i] + bias[i % O], 0.0);
	return px_run(c, "mlp", args, 4, 0, NULL) && px_close(c, got, want, B * O, 1e-4);
}

static int check_softmax(struct px_ctx *c)
{
	enum { R = 4, C = 10 };
	double x[R * C], got[R * C], want[R * C];
	struct px_arg args[] = {
		{ "x", px_f32(2, R, C), x, NULL, 0 }, { "y", px_f32(2, R, C), NULL, got, 0 },
	};

	px_fill(c, x, R * C);
	for (int r = 0; r < R; r++) {
		double mx = -INFINITY, sum = 0.0;

		for (int j = 0; j < C; j++)
			mx = fmax(mx, x[r * C + j] * 4);
		for (int j = 0; j < C; j++)
			sum += exp(x[r * C + j] * 4 - mx);
		for (int j = 0; j < C; j++)
			want[r * C + j] = exp(x[r * C + j] * 4 - mx) / sum;
	}
	for (int i = 0; i < R * C; i++)
		x[i] *= 4; /* a wider range than [-1, 1] */
	return px_run(c, "sm", args, 2, 0, NULL) && px_close(c, got, want, R * C, 1e-4);
}

/* One launch of `red`, three checks on its outputs. */
static double red_s[6], red_m[5], red_avg[6], red_x[30];
static int red_ok = -1;

static int px_reduce_once(struct px_ctx *c)
{
	struct px_arg args[] = {
		{ "x", px_f32(2, 6, 5), red_x, NULL, 0 }, { "s", px_f32(1, 6, 0), NULL, red_s, 0 },
		{ "m", px_f32(1, 5, 0), NULL, red_m, 0 }, { "avg", px_f32(1, 6, 0), NULL, red_avg, 0 },
	};

	if (red_ok < 0) {
		px_fill(c, red_x, 30);
		red_ok = px_run(c, "red", args, 4, 0, NULL);
	}
	return red_ok;
}

static int check_reduce(struct px_ctx *c, int which)
{
	double want[6];

	if (!px_reduce_once(c))
		return 0;
	for (int r = 0; r < 6; r++) {
		double s = 0.0;

		for (int j = 0; j < 5; j++)
			s += red_x[r * 5 + j];
		want[r] = which == 0 ? s : s / 5.0;
	}
	if (which == 1) {
		for (int j = 0; j < 5; j++) {
			want[j] = -INFINITY;
			for (int r = 0; r < 6; r++)
				want[j] = fmax(want[j], red_x[r * 5 + j]);
		}
		return px_close(c, red_m, want, 5, 0.0);
	}
	return px_close(c, which == 0 ? red_s : red_avg, want, 6, 1e-5);
}

static int check_reduce_sum(struct px_ctx *c) { return check_reduce(c, 0); }
static int check_reduce_max(struct px_ctx *c) { return check_reduce(c, 1); }
static int check_reduce_mean(struct px_ctx *c) { return check_reduce(c, 2); }

static int check_repeat(struct px_ctx *c)
{
	enum { N = 12 };
	double w[N], g[N], got[N], want[N];
	const float lr = 0.125f;
	struct px_arg args[] = {
		{ "w", px_f32(1, N, 0), w, NULL, 0 }, { "g", px_f32(1, N, 0), g, NULL, 0 },
		{ "out", px_f32(1, N, 0), NULL, got, 0 },
	};

	px_fill(c, w, N);
	px_fill(c, g, N);
	for (int i = 0; i < N; i++) {
		float cur = (float)w[i];

		for (int r = 0; r < 10; r++)
			cur -= (float)g[i] * lr;
		want[i] = cur;
	}
	return px_run(c, "sgd", args, 3, lr, "lr") && px_close(c, got, want, N, 1e-5);
}

/* PX_ASYNC submits in flight at once, completion by poll(), each reaped and checked. */
static int check_async(struct px_ctx *c)
{
	enum { M = 4, K = 8, N = 4 };
	double a[PX_ASYNC][M * K], b[K * N], got[M * N], want[M * N];
	uint64_t ha[PX_ASYNC] = { 0 }, hc[PX_ASYNC] = { 0 }, hb = 0, tok[PX_ASYNC] = { 0 };
	struct px_type ta = px_f32(2, M, K), tb = px_f32(2, K, N), tc = px_f32(2, M, N);
	struct pxos_binding bind[PX_ASYNC][3];
	struct pxos_ioc_result res;
	struct pxos_ioc_reap r;
	int err, ok = 0, reaped = 0, i;

	px_fill(c, b, K * N);
	err = px_tensor(c->fd, &tb, b, &hb, &res);
	for (i = 0; !err && i < PX_ASYNC; i++) {
		px_fill(c, a[i], M * K);
		err = px_tensor(c->fd, &ta, a[i], &ha[i], &res);
		if (!err)
			err = px_tensor(c->fd, &tc, NULL, &hc[i], &res);
		px_bind_buffer(&bind[i][0], "a", ha[i]);
		px_bind_buffer(&bind[i][1], "b", hb);
		px_bind_buffer(&bind[i][2], "c", hc[i]);
		if (!err)
			err = px_submit(c->fd, px_kernel_id(&c->prog, "mm"), bind[i], 3, &tok[i], &res);
	}
	if (err) {
		px_fail(c, "submit", err, &res);
		goto out;
	}
	while (reaped < PX_ASYNC) {
		if (!px_poll(c->fd, 120000)) {
			snprintf(c->detail, PX_DETAIL, "poll: no completion in 120 s");
			goto out;
		}
		while ((err = px_reap(c->fd, 0, 0, &r)) != -EAGAIN) {
			if (err) {
				px_fail(c, "reap", err, &r.res);
				goto out;
			}
			for (i = 0; i < PX_ASYNC && tok[i] != r.token; i++)
				;
			if (i == PX_ASYNC || px_fetch(c, hc[i], got, M * N)) {
				snprintf(c->detail, PX_DETAIL, "reap: token %llu unknown or unreadable",
					 (unsigned long long)r.token);
				goto out;
			}
			px_ref_matmul(a[i], b, want, M, K, N);
			if (!px_close(c, got, want, M * N, 1e-4))
				goto out;
			tok[i] = 0;
			reaped++;
			if (r.pending == 0)
				break;
		}
	}
	ok = 1;
	snprintf(c->detail, PX_DETAIL, "%d launches in flight, all reaped and correct", PX_ASYNC);
out:
	for (i = 0; i < PX_ASYNC; i++) {
		if (ha[i])
			px_free(c->fd, ha[i], NULL);
		if (hc[i])
			px_free(c->fd, hc[i], NULL);
	}
	if (hb)
		px_free(c->fd, hb, NULL);
	return ok;
}

static int check_bad_handle(struct px_ctx *c)
{
	struct pxos_ioc_result res;
	struct pxos_ioc_launch l;
	struct pxos_binding b[3];
	int err1, err2;
	char buf[16];

	err1 = px_read(c->fd, 0x7fffffff0001ull, 0, buf, sizeof(buf), &res);
	px_bind_buffer(&b[0], "a", 0x7fffffff0001ull);
	px_bind_buffer(&b[1], "b", 0x7fffffff0002ull);
	px_bind_buffer(&b[2], "c", 0x7fffffff0003ull);
	err2 = px_launch(c->fd, px_kernel_id(&c->prog, "mm"), b, 3, 0, &l);
	snprintf(c->detail, PX_DETAIL, "read: %s [%s]; launch: %s [%s]", strerror(-err1),
		 px_status_name(res.status), strerror(-err2), px_status_name(l.res.status));
	return err1 == -ENOENT && res.status == PXOS_S_NOT_FOUND && err2 != 0 && l.res.status != 0;
}

static int check_stats(struct px_ctx *c)
{
	struct pxos_ioc_stats s;
	int err = px_stats(c->fd, &s);

	if (err)
		return px_fail(c, "stats", err, &s.res);
	snprintf(c->detail, PX_DETAIL, "%llu launches (%llu failed), %u buffers, %llu of %llu bytes, "
		 "%u sessions", (unsigned long long)s.launches_total, (unsigned long long)s.launches_failed,
		 s.nbuffers, (unsigned long long)s.memory_used, (unsigned long long)s.memory_quota,
		 s.sessions_open);
	/* VM-wide figures: other processes of this guest may hold buffers right now. */
	return s.launches_total >= 6 && s.memory_used <= s.memory_quota && s.sessions_open >= 1 &&
	       s.requests_total > 0;
}

/* The VM says it goes idle (the host may write its buffers back), then busy again. */
static int check_idle_hint(struct px_ctx *c)
{
	struct pxos_ioc_result res;
	int err = px_idle_hint(c->fd, 1, &res);

	if (!err)
		err = px_idle_hint(c->fd, 0, &res);
	if (err)
		return px_fail(c, "idle hint", err, &res);
	snprintf(c->detail, PX_DETAIL, "idle, then busy again");
	return 1;
}

static const struct {
	const char *name;
	int (*fn)(struct px_ctx *c);
} px_checks[] = {
	{ "info", check_info },
	{ "transfer_3MiB", check_transfer },
	{ "compile_error", check_compile_error },
	{ "matmul_known", check_matmul_known },
	{ "matmul_random", check_matmul_random },
	{ "mlp_layer", check_mlp },
	{ "softmax", check_softmax },
	{ "reduce_sum", check_reduce_sum },
	{ "reduce_max", check_reduce_max },
	{ "reduce_mean", check_reduce_mean },
	{ "repeat_loop", check_repeat },
	{ "async_poll_reap", check_async },
	{ "bad_handle", check_bad_handle },
	{ "idle_hint", check_idle_hint },
	{ "stats", check_stats },
};

static int px_prepare(struct px_ctx *c, int fd, uint64_t seed)
{
	int err;

	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->rng = seed;
	err = px_compile(fd, px_selftest_source, strlen(px_selftest_source), &c->prog);
	if (err) {
		px_report("compile selftest program", err, &c->prog.res);
		for (uint32_t i = 0; i < c->prog.ndiags; i++)
			fprintf(stderr, "  line %u:%u: error[%s]: %s\n", c->prog.diags[i].line,
				c->prog.diags[i].column, c->prog.diags[i].code, c->prog.diags[i].message);
	}
	return err;
}

int px_selftest(int fd)
{
	const int n = (int)(sizeof(px_checks) / sizeof(px_checks[0]));
	struct px_ctx c;
	int passed = 0;

	if (px_prepare(&c, fd, 0x9e3779b97f4a7c15ull)) {
		printf("selftest: 0/%d passed (the selftest program did not compile)\n", n);
		return 1;
	}
	for (int i = 0; i < n; i++) {
		int ok;

		c.detail[0] = '\0';
		ok = px_checks[i].fn(&c);
		passed += ok;
		printf("check %2d/%d %-16s %s: %s\n", i + 1, n, px_checks[i].name, ok ? "ok" : "FAIL",
		       c.detail);
		fflush(stdout);
	}
	printf("selftest: %d/%d passed\n", passed, n);
	return passed == n ? 0 : 1;
}

/* A steady load: MLP layers and matmuls, each checked; one progress line per iteration. */
int px_workload(int fd, int iters)
{
	struct px_ctx c;
	int passed = 0;

	if (px_prepare(&c, fd, 0x2545f4914f6cdd1dull))
		return 1;
	for (int i = 0; i < iters; i++) {
		int ok = check_mlp(&c) && check_matmul_random(&c);

		passed += ok;
		printf("workload: iteration %d/%d %s: %s\n", i + 1, iters, ok ? "ok" : "FAIL", c.detail);
		fflush(stdout);
	}
	printf("workload: %d/%d passed\n", passed, iters);
	return passed == iters ? 0 : 1;
}
