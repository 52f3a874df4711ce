/* SPDX-License-Identifier: Apache-2.0 */
/*
 * pxos_check.h - what the selftest and workload checks share: a context with the compiled
 * selftest program, a deterministic generator, launching over float32 tensors, comparing
 * with a tolerance, and the C reference matmul.
 */
#ifndef PXOS_CHECK_H
#define PXOS_CHECK_H

#include "pxos_lib.h"

#define PX_DETAIL 256

struct px_ctx {
	int fd;
	struct pxos_ioc_compile prog;
	uint64_t rng;
	char detail[PX_DETAIL];
};

/* One tensor argument of a launch: `in` given (uploaded), or an output read into `out`. */
struct px_arg {
	const char *name;
	struct px_type type;
	const double *in;
	double *out;
	uint64_t handle;
};

double px_rand(struct px_ctx *c);
void px_fill(struct px_ctx *c, double *v, size_t n);
int px_fail(struct px_ctx *c, const char *what, int err, const struct pxos_ioc_result *res);
int px_close(struct px_ctx *c, const double *got, const double *ref, size_t n, double rtol);
struct px_type px_f32(uint32_t rank, uint64_t d0, uint64_t d1);
int px_fetch(struct px_ctx *c, uint64_t h, double *out, size_t n);
int px_run(struct px_ctx *c, const char *kernel, struct px_arg *a, unsigned int n, double scalar,
	   const char *scalar_name);
void px_ref_matmul(const double *a, const double *b, double *c, size_t m, size_t k, size_t n);

#endif /* PXOS_CHECK_H */
