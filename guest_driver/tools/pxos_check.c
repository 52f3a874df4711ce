// SPDX-License-Identifier: Apache-2.0
/*
 * pxos_check.c - helpers of the selftest and workload checks (see pxos_check.h).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pxos_check.h"

double px_rand(struct px_ctx *c)
{
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return (double)(c->rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

void px_fill(struct px_ctx *c, double *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		v[i] = (float)px_rand(c);
}

int px_fail(struct px_ctx *c, const char *what, int err, const struct pxos_ioc_result *res)
{
	if (res && res->status)
		snprintf(c->detail, PX_DETAIL, "%s: %s [%s: %s]", what, strerror(-err),
			 px_status_name(res->status), res->message);
	else
		snprintf(c->detail, PX_DETAIL, "%s: %s", what, strerror(-err));
	return 0;
}

/* Every value within atol + rtol * |ref|; the worst error goes into the detail line. */
int px_close(struct px_ctx *c, const double *got, const double *ref, size_t n, double rtol)
{
	double worst = 0.0;
	size_t bad = n;

	for (size_t i = 0; i < n; i++) {
		double err = fabs(got[i] - ref[i]);

		if (err > worst)
			worst = err;
		if (!(err <= 1e-5 + rtol * fabs(ref[i])) && bad == n)
			bad = i;
	}
	if (bad < n) {
		snprintf(c->detail, PX_DETAIL, "element %zu: got %.7g, want %.7g (max err %.3g)", bad,
			 got[bad], ref[bad], worst);
		return 0;
	}
	snprintf(c->detail, PX_DETAIL, "%zu values, max err %.3g", n, worst);
	return 1;
}

struct px_type px_f32(uint32_t rank, uint64_t d0, uint64_t d1)
{
	struct px_type t = { .dtype = PXOS_DTYPE_FLOAT32, .rank = rank, .dims = { d0, d1 } };

	return t;
}

int px_fetch(struct px_ctx *c, uint64_t h, double *out, size_t n)
{
	struct pxos_ioc_result res;
	float *tmp = malloc(n * sizeof(float));
	int err;

	if (!tmp)
		return -ENOMEM;
	err = px_read(c->fd, h, 0, tmp, n * sizeof(float), &res);
	if (!err)
		px_decode(PXOS_DTYPE_FLOAT32, tmp, out, n);
	else
		px_fail(c, "read", err, &res);
	free(tmp);
	return err;
}

int px_run(struct px_ctx *c, const char *kernel, struct px_arg *a, unsigned int n,
		  double scalar, const char *scalar_name)
{
	struct pxos_binding b[8];
	struct pxos_ioc_launch l;
	struct pxos_ioc_result res;
	unsigned int i, nb = 0;
	int err = 0, ok = 0;

	for (i = 0; i < n; i++)
		a[i].handle = 0;
	for (i = 0; i < n; i++) {
		err = px_tensor(c->fd, &a[i].type, a[i].in, &a[i].handle, &res);
		if (err)
			goto out;
		px_bind_buffer(&b[nb++], a[i].name, a[i].handle);
	}
	if (scalar_name)
		px_bind_f64(&b[nb++], scalar_name, PXOS_DTYPE_FLOAT32, scalar);
	err = px_launch(c->fd, px_kernel_id(&c->prog, kernel), b, nb, 0, &l);
	if (err) {
		res = l.res;
		goto out;
	}
	for (i = 0; i < n; i++)
		if (a[i].out && px_fetch(c, a[i].handle, a[i].out, px_count(&a[i].type)))
			goto free;
	ok = 1;
out:
	if (!ok)
		px_fail(c, kernel, err, &res);
free:
	for (i = 0; i < n; i++)
		if (a[i].handle)
			px_free(c->fd, a[i].handle, NULL);
	return ok;
}

void px_ref_matmul(const double *a, const double *b, double *c, size_t m, size_t k, size_t n)
{
	for (size_t i = 0; i < m; i++)
		for (size_t j = 0; j < n; j++) {
			double s = 0.0;

			for (size_t p = 0; p < k; p++)
				s += a[i * k + p] * b[p * n + j];
			c[i * n + j] = s;
		}
}
