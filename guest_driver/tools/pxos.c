// SPDX-License-Identifier: Apache-2.0
/*
 * pxos.c - the guest's command-line tool for /dev/pxosN (static, so it runs in a busybox
 * initramfs). Commands: info, compile, run, alloc, stats, selftest, workload, bench.
 * Figures go out as text, or as one JSON object with --json.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pxos_lib.h"
#include "pxos_programs.h"

int px_selftest(int fd);
int px_workload(int fd, int iters);
int px_bench(int fd, int iters, int json);
int px_load(int fd, int seconds, int depth, int size);

#define PX_PRINT_MAX 64           /* values printed per output before "..." */

static int usage(void)
{
	fprintf(stderr,
		"usage: pxos info [--json]\n"
		"       pxos compile FILE\n"
		"       pxos run FILE [--kernel NAME] [--repeat N] [--timeout MS]\n"
		"                --bind NAME=DTYPE[DIMS][:v1,v2,...|:random|:fill=X] ...\n"
		"       pxos alloc DTYPE[DIMS] [--hold SECONDS]\n"
		"       pxos stats [--json]\n"
		"       pxos idle on|off\n"
		"       pxos selftest\n"
		"       pxos workload [N]\n"
		"       pxos bench [N] [--json]\n"
		"       pxos load SECONDS [--depth D] [--size N]\n"
		"options: --transport module|drm|auto (default $PXOS_TRANSPORT or auto)\n"
		"device: $PXOS_DEVICE or /dev/pxos0 (module); $PXOS_DRM_DEVICE or /dev/dri/renderD128\n"
		"        (drm: the stock virtio_gpu driver); auto: the module's if present\n");
	return 2;
}

static int cmd_info(int fd, int json)
{
	struct pxos_ioc_info i;
	int err = px_info(fd, &i);

	if (err) {
		px_report("info", err, &i.res);
		return 1;
	}
	if (json) {
		printf("{\"abi\": \"%u.%u\", \"ioctl_version\": %u, \"session\": %u, \"vm_id\": %u, "
		       "\"memory_quota\": %llu, \"memory_used\": %llu, \"compute_share_pct\": %u, "
		       "\"compute_cap_pct\": %u, \"backend\": \"%s\", \"device\": \"%s\", "
		       "\"max_transfer_bytes\": %llu, \"max_inflight\": %u}\n",
		       i.abi_major, i.abi_minor, i.ioctl_version, i.session_id, i.vm_id,
		       (unsigned long long)i.memory_quota, (unsigned long long)i.memory_used,
		       i.compute_share_pct, i.compute_cap_pct, i.backend, i.device_name,
		       (unsigned long long)i.max_transfer_bytes, i.max_inflight);
		return 0;
	}
	printf("pxOS ABI %u.%u (ioctl v%u), vm %u, session %u\n", i.abi_major, i.abi_minor,
	       i.ioctl_version, i.vm_id, i.session_id);
	printf("backend %s on %s\n", i.backend, i.device_name);
	printf("memory quota %llu bytes, used %llu\n", (unsigned long long)i.memory_quota,
	       (unsigned long long)i.memory_used);
	printf("compute share %u%%, cap %u%%\n", i.compute_share_pct, i.compute_cap_pct);
	printf("limits: rank %u, bindings %u, source %u bytes, transfer %llu bytes, in flight %u\n",
	       i.max_rank, i.max_bindings, i.max_source_bytes,
	       (unsigned long long)i.max_transfer_bytes, i.max_inflight);
	return 0;
}

static int compile_file(int fd, const char *path, struct pxos_ioc_compile *c)
{
	size_t len;
	char *src = px_read_file(path, &len);
	int err;

	if (!src) {
		fprintf(stderr, "pxos: %s: %s\n", path, strerror(errno));
		return -errno;
	}
	err = px_compile(fd, src, len, c);
	free(src);
	if (err == -EBADMSG) {
		for (uint32_t i = 0; i < c->ndiags; i++)
			fprintf(stderr, "%s:%u:%u: error[%s]: %s\n", path, c->diags[i].line,
				c->diags[i].column, c->diags[i].code, c->diags[i].message);
	} else if (err) {
		px_report(path, err, &c->res);
	}
	return err;
}

static const char *px_dir_name(uint32_t d)
{
	return d == PXOS_DIR_IN ? "in" : d == PXOS_DIR_OUT ? "out" : d == PXOS_DIR_INOUT ? "inout" : "?";
}

static void print_param(const struct pxos_param_desc *p)
{
	printf("  param %s %s", p->name, px_dtype_name(p->dtype));
	if (p->rank == PXOS_RANK_ANY) {
		printf("[]");
	} else {
		for (uint32_t d = 0; d < p->rank && d < PXOS_MAX_RANK; d++) {
			if (p->dims[d] == PXOS_DIM_SYMBOLIC)
				printf("%s?", d ? "," : "[");
			else
				printf("%s%llu", d ? "," : "[", (unsigned long long)p->dims[d]);
		}
		if (p->rank)
			printf("]");
	}
	printf(" %s\n", px_dir_name(p->direction));
}

static int cmd_compile(int fd, const char *path)
{
	struct pxos_ioc_compile c;
	struct pxos_ioc_kernel_info ki;

	if (compile_file(fd, path, &c))
		return 1;
	for (uint32_t k = 0; k < c.nkernels; k++) {
		printf("%s: ok: kernel %s (id %llu), %u params\n", path, c.kernels[k].name,
		       (unsigned long long)c.kernels[k].kernel_id, c.kernels[k].nparams);
		if (px_kernel_info(fd, c.kernels[k].kernel_id, &ki) == 0)
			for (uint32_t p = 0; p < ki.nparams; p++)
				print_param(&ki.params[p]);
	}
	return 0;
}

struct px_bind_arg {
	char name[PXOS_MAX_NAME];
	struct px_type type;
	double *values;               /* NULL: leave the buffer as allocated */
	uint64_t handle;
};

/* NAME=DTYPE[DIMS][:v1,v2,...|:random|:fill=X] */
static int parse_bind(const char *arg, struct px_bind_arg *b, unsigned int *seed)
{
	const char *eq = strchr(arg, '='), *rest;
	uint64_t n;

	memset(b, 0, sizeof(*b));
	if (!eq || eq == arg || (size_t)(eq - arg) >= PXOS_MAX_NAME)
		return -EINVAL;
	memcpy(b->name, arg, (size_t)(eq - arg));
	if (px_parse_type(eq + 1, &b->type, &rest))
		return -EINVAL;
	n = px_count(&b->type);
	if (*rest == '\0')
		return b->type.rank ? 0 : -EINVAL; /* a scalar needs its value */
	if (*rest++ != ':')
		return -EINVAL;
	b->values = calloc(n, sizeof(double));
	if (!b->values)
		return -ENOMEM;
	if (strcmp(rest, "random") == 0) {
		for (uint64_t i = 0; i < n; i++)
			b->values[i] = (double)rand_r(seed) / RAND_MAX * 2.0 - 1.0;
	} else if (strncmp(rest, "fill=", 5) == 0) {
		double x = strtod(rest + 5, NULL);

		for (uint64_t i = 0; i < n; i++)
			b->values[i] = x;
	} else {
		uint64_t i = 0;
		char *end;

		while (*rest && i < n) {
			b->values[i++] = strtod(rest, &end);
			if (end == rest || (*end && *end != ','))
				return -EINVAL;
			rest = *end ? end + 1 : end;
		}
		if (i != n || *rest) {
			fprintf(stderr, "pxos: --bind %s: %llu values for %llu elements\n", b->name,
				(unsigned long long)i, (unsigned long long)n);
			return -EINVAL;
		}
	}
	return 0;
}

static int print_output(int fd, const struct px_bind_arg *b)
{
	uint64_t n = px_count(&b->type), nbytes = n * px_dtype_size(b->type.dtype);
	struct pxos_ioc_result res;
	void *raw = malloc(nbytes);
	double *v = calloc(n, sizeof(double));
	char type[128];
	int err = raw && v ? px_read(fd, b->handle, 0, raw, nbytes, &res) : -ENOMEM;

	if (err) {
		px_report(b->name, err, &res);
	} else {
		px_decode(b->type.dtype, raw, v, n);
		px_format_type(&b->type, type, sizeof(type));
		printf("%s %s =", b->name, type);
		for (uint64_t i = 0; i < n && i < PX_PRINT_MAX; i++)
			printf(" %.7g", v[i]);
		printf("%s\n", n > PX_PRINT_MAX ? " ..." : "");
	}
	free(raw);
	free(v);
	return err;
}

static int cmd_run(int fd, int argc, char **argv)
{
	struct px_bind_arg binds[PXOS_MAX_BINDINGS];
	struct pxos_binding wire[PXOS_MAX_BINDINGS];
	struct pxos_ioc_kernel_info ki;
	struct pxos_ioc_compile c;
	struct pxos_ioc_launch l;
	struct pxos_ioc_result res;
	const char *kname = NULL;
	unsigned int nb = 0, seed = 1;
	long repeat = 1, timeout = 0;
	uint64_t kid;
	int err, rc = 1;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--kernel") == 0 && i + 1 < argc) {
			kname = argv[++i];
		} else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
			repeat = strtol(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
			timeout = strtol(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc) {
			if (nb == PXOS_MAX_BINDINGS || parse_bind(argv[++i], &binds[nb], &seed)) {
				fprintf(stderr, "pxos: bad --bind %s\n", argv[i]);
				return 2;
			}
			nb++;
		} else {
			return usage();
		}
	}
	if (compile_file(fd, argv[0], &c))
		return 1;
	kid = px_kernel_id(&c, kname);
	if (!kid || (!kname && c.nkernels > 1)) {
		fprintf(stderr, "pxos: %s: %s\n", argv[0], kname ? "no such kernel" :
			"several kernels: say which with --kernel");
		return 2;
	}
	err = px_kernel_info(fd, kid, &ki);
	if (err) {
		px_report("kernel info", err, &ki.res);
		return 1;
	}
	for (unsigned int i = 0; i < nb; i++) {
		if (binds[i].type.rank == 0) {
			px_bind_f64(&wire[i], binds[i].name, binds[i].type.dtype, binds[i].values[0]);
			continue;
		}
		err = px_tensor(fd, &binds[i].type, binds[i].values, &binds[i].handle, &res);
		if (err) {
			px_report(binds[i].name, err, &res);
			goto out;
		}
		px_bind_buffer(&wire[i], binds[i].name, binds[i].handle);
	}
	for (long r = 0; r < repeat; r++) {
		err = px_launch(fd, kid, wire, nb, (uint32_t)timeout, &l);
		if (err) {
			px_report(ki.name, err, &l.res);
			goto out;
		}
	}
	printf("launched %s x%ld: launch %llu, device %.1f us, queue %.1f us, total %.1f us\n",
	       ki.name, repeat, (unsigned long long)l.launch_id, l.device_ns / 1e3, l.queue_ns / 1e3,
	       l.total_ns / 1e3);
	rc = 0;
	for (unsigned int i = 0; i < nb; i++) {
		for (uint32_t p = 0; p < ki.nparams; p++) {
			if (strcmp(ki.params[p].name, binds[i].name) == 0 && binds[i].handle &&
			    ki.params[p].direction != PXOS_DIR_IN && print_output(fd, &binds[i]))
				rc = 1;
		}
	}
out:
	for (unsigned int i = 0; i < nb; i++) {
		if (binds[i].handle)
			px_free(fd, binds[i].handle, NULL);
		free(binds[i].values);
	}
	return rc;
}

/* Allocate; with hold > 0 keep the buffer (and the session) for that many seconds. */
static int cmd_alloc(int fd, const char *spec, long hold)
{
	struct pxos_ioc_result res;
	struct px_type t;
	const char *end;
	uint64_t h;
	int err;

	if (px_parse_type(spec, &t, &end) || *end || t.rank == 0) {
		fprintf(stderr, "pxos: alloc: bad type %s (want e.g. float[1024,1024])\n", spec);
		return 2;
	}
	err = px_alloc(fd, &t, &h, &res);
	if (err) {
		px_report("alloc", err, &res);
		return 1;
	}
	printf("allocated %s: handle %llu\n", spec, (unsigned long long)h);
	if (hold > 0)
		sleep((unsigned int)hold);
	px_free(fd, h, NULL);
	return 0;
}

static int cmd_stats(int fd, int json)
{
	struct pxos_ioc_stats s;
	int err = px_stats(fd, &s);

	if (err) {
		px_report("stats", err, &s.res);
		return 1;
	}
	printf(json ? "{\"memory_quota\": %llu, \"memory_used\": %llu, \"memory_device_bytes\": %llu, "
		      "\"memory_host_bytes\": %llu, \"launches_total\": %llu, \"launches_failed\": %llu, "
		      "\"device_ns_total\": %llu, \"queue_depth\": %u, \"inflight\": %u, "
		      "\"compute_share_pct\": %u, \"achieved_share_ppm\": %u, \"nbuffers\": %u, "
		      "\"nkernels\": %u, \"sessions_open\": %u, \"requests_total\": %llu, "
		      "\"requests_failed\": %llu}\n"
		    : "memory: quota %llu, used %llu (device %llu, host %llu)\n"
		      "launches: %llu (%llu failed), device time %llu ns\n"
		      "queue depth %u, in flight %u, share %u%%, achieved %u ppm\n"
		      "buffers %u, kernels %u, sessions %u, requests %llu (%llu failed)\n",
	       (unsigned long long)s.memory_quota, (unsigned long long)s.memory_used,
	       (unsigned long long)s.memory_device_bytes, (unsigned long long)s.memory_host_bytes,
	       (unsigned long long)s.launches_total, (unsigned long long)s.launches_failed,
	       (unsigned long long)s.device_ns_total, s.queue_depth, s.inflight, s.compute_share_pct,
	       s.achieved_share_ppm, s.nbuffers, s.nkernels, s.sessions_open,
	       (unsigned long long)s.requests_total, (unsigned long long)s.requests_failed);
	return 0;
}

static int cmd_load(int fd, int argc, char **argv)
{
	int depth = 4, size = 128;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--depth") == 0 && i + 1 < argc)
			depth = atoi(argv[++i]);
		else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
			size = atoi(argv[++i]);
		else
			return usage();
	}
	return px_load(fd, atoi(argv[0]), depth, size);
}

static int cmd_idle(int fd, int idle)
{
	struct pxos_ioc_result res;
	int err = px_idle_hint(fd, idle, &res);

	if (err) {
		px_report("idle", err, &res);
		return 1;
	}
	printf("idle hint: %s\n", idle ? "idle" : "busy");
	return 0;
}

int main(int argc, char **argv)
{
	int json = 0, fd, rc;
	const char *cmd;

	/* --transport X, anywhere: taken out before the command's own arguments are read. */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--transport") == 0 && i + 1 < argc) {
			px_transport = argv[i + 1];
			memmove(&argv[i], &argv[i + 2], (size_t)(argc - i - 1) * sizeof(*argv));
			argc -= 2;
			i--;
		}
	}
	if (argc < 2)
		return usage();
	cmd = argv[1];
	for (int i = 2; i < argc; i++)
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0)
		return usage(), 0;
	fd = px_open();
	if (fd < 0) {
		fprintf(stderr, "pxos: %s: %s\n", px_transport && strcmp(px_transport, "drm") == 0 ?
			"the render node (DRM transport)" : getenv("PXOS_DEVICE") ? getenv("PXOS_DEVICE") : "/dev/pxos0",
			strerror(-fd));
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (strcmp(cmd, "info") == 0)
		rc = cmd_info(fd, json);
	else if (strcmp(cmd, "compile") == 0 && argc == 3)
		rc = cmd_compile(fd, argv[2]);
	else if (strcmp(cmd, "run") == 0 && argc >= 3)
		rc = cmd_run(fd, argc - 2, argv + 2);
	else if (strcmp(cmd, "alloc") == 0 && argc == 3)
		rc = cmd_alloc(fd, argv[2], 0);
	else if (strcmp(cmd, "alloc") == 0 && argc == 5 && strcmp(argv[3], "--hold") == 0)
		rc = cmd_alloc(fd, argv[2], strtol(argv[4], NULL, 10));
	else if (strcmp(cmd, "stats") == 0)
		rc = cmd_stats(fd, json);
	else if (strcmp(cmd, "idle") == 0 && argc == 3 &&
		 (strcmp(argv[2], "on") == 0 || strcmp(argv[2], "off") == 0))
		rc = cmd_idle(fd, strcmp(argv[2], "on") == 0);
	else if (strcmp(cmd, "selftest") == 0)
		rc = px_selftest(fd);
	else if (strcmp(cmd, "workload") == 0)
		rc = px_workload(fd, argc > 2 ? atoi(argv[2]) : 10);
	else if (strcmp(cmd, "load") == 0 && argc >= 3)
		rc = cmd_load(fd, argc - 2, argv + 2);
	else if (strcmp(cmd, "bench") == 0)
		rc = px_bench(fd, argc > 2 && argv[2][0] != '-' ? atoi(argv[2]) : 50, json);
	else
		rc = usage();
	px_close_device(fd);
	return rc;
}
