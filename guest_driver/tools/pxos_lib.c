// SPDX-License-Identifier: Apache-2.0
/*
 * pxos_lib.c - the ioctl wrappers, tensor types and conversions behind the `pxos` tool.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <poll.h>

#include "pxos_drm.h"
#include "pxos_lib.h"

const char *px_transport; /* --transport: "module", "drm", "auto"; NULL: $PXOS_TRANSPORT or auto */

int px_open(void)
{
	const char *path = getenv("PXOS_DEVICE");
	const char *node = getenv("PXOS_DRM_DEVICE");
	const char *want = px_transport ? px_transport : getenv("PXOS_TRANSPORT");
	int fd;

	if (!path)
		path = "/dev/pxos0";
	if (!node)
		node = PXD_RENDER_NODE;
	if (!want || !*want)
		want = "auto";
	if (strcmp(want, "drm") == 0 ||
	    (strcmp(want, "auto") == 0 && access(path, F_OK) != 0 && pxd_probe(node)))
		return pxd_open(node);
	if (strcmp(want, "module") != 0 && strcmp(want, "auto") != 0)
		return -EINVAL;
	fd = open(path, O_RDWR | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

void px_close_device(int fd)
{
	if (pxd_is(fd))
		pxd_close(fd);
	else if (fd >= 0)
		close(fd);
}

int px_poll(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n;

	if (pxd_is(fd))
		return pxd_poll(timeout_ms);
	n = poll(&p, 1, timeout_ms);
	return n == 1 && (p.revents & POLLIN);
}

const char *px_status_name(uint32_t s)
{
	static const char *const names[] = {
		"PXOS_S_OK", "PXOS_S_INVALID", "PXOS_S_NOT_FOUND", "PXOS_S_QUOTA",
		"PXOS_S_NO_DEVICE_MEMORY", "PXOS_S_COMPILE", "PXOS_S_BIND", "PXOS_S_EXEC",
		"PXOS_S_CANCELLED", "PXOS_S_BUSY", "PXOS_S_TOO_LARGE", "PXOS_S_UNSUPPORTED",
		"PXOS_S_INTERNAL", "PXOS_S_EXISTS", "PXOS_S_RANGE", "PXOS_S_READ_ONLY",
		"PXOS_S_VM_GONE",
	};

	return s < sizeof(names) / sizeof(names[0]) ? names[s] : "PXOS_S_?";
}

static const struct {
	const char *name;
	uint32_t dtype;
} px_dtypes[] = {
	{ "float16", PXOS_DTYPE_FLOAT16 }, { "float32", PXOS_DTYPE_FLOAT32 },
	{ "float64", PXOS_DTYPE_FLOAT64 }, { "float", PXOS_DTYPE_FLOAT32 },
	{ "int32", PXOS_DTYPE_INT32 }, { "int64", PXOS_DTYPE_INT64 }, { "int", PXOS_DTYPE_INT32 },
};

const char *px_dtype_name(uint32_t dtype)
{
	for (size_t i = 0; i < sizeof(px_dtypes) / sizeof(px_dtypes[0]); i++)
		if (px_dtypes[i].dtype == dtype)
			return px_dtypes[i].name;
	return "?";
}

size_t px_dtype_size(uint32_t dtype)
{
	switch (dtype) {
	case PXOS_DTYPE_FLOAT16: return 2;
	case PXOS_DTYPE_FLOAT32: case PXOS_DTYPE_INT32: return 4;
	case PXOS_DTYPE_FLOAT64: case PXOS_DTYPE_INT64: return 8;
	default: return 0;
	}
}

uint64_t px_count(const struct px_type *t)
{
	uint64_t n = 1;

	for (uint32_t i = 0; i < t->rank; i++)
		n *= t->dims[i];
	return n;
}

int px_parse_type(const char *s, struct px_type *t, const char **end)
{
	size_t best = 0;

	memset(t, 0, sizeof(*t));
	for (size_t i = 0; i < sizeof(px_dtypes) / sizeof(px_dtypes[0]); i++) {
		size_t n = strlen(px_dtypes[i].name);

		if (n > best && strncmp(s, px_dtypes[i].name, n) == 0) {
			best = n;
			t->dtype = px_dtypes[i].dtype;
		}
	}
	if (!best)
		return -EINVAL;
	s += best;
	if (*s == '[') {
		s++;
		while (*s != ']') {
			char *e;
			unsigned long long d;

			if (t->rank == PXOS_MAX_RANK || !isdigit((unsigned char)*s))
				return -EINVAL;
			d = strtoull(s, &e, 10);
			if (d == 0 || d > PXOS_MAX_BUFFER_BYTES)
				return -EINVAL;
			t->dims[t->rank++] = d;
			s = e;
			while (*s == ' ')
				s++;
			if (*s == ',')
				s++;
			while (*s == ' ')
				s++;
		}
		s++;
	}
	if (px_count(t) * px_dtype_size(t->dtype) > PXOS_MAX_BUFFER_BYTES)
		return -E2BIG;
	*end = s;
	return 0;
}

void px_format_type(const struct px_type *t, char *buf, size_t n)
{
	size_t off = (size_t)snprintf(buf, n, "%s", px_dtype_name(t->dtype));

	for (uint32_t i = 0; i < t->rank && off < n; i++)
		off += (size_t)snprintf(buf + off, n - off, "%s%llu%s", i ? "," : "[",
					(unsigned long long)t->dims[i], i + 1 == t->rank ? "]" : "");
}

static uint16_t px_f32_to_f16(float f)
{
	uint32_t x;
	uint32_t sign, exp, mant;

	memcpy(&x, &f, 4);
	sign = (x >> 16) & 0x8000;
	exp = (x >> 23) & 0xff;
	mant = x & 0x7fffff;
	if (exp == 0xff)
		return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
	if (exp > 142)
		return (uint16_t)(sign | 0x7c00);
	if (exp < 113) {            /* subnormal or zero in half */
		if (exp < 103)
			return (uint16_t)sign;
		mant |= 0x800000;
		return (uint16_t)(sign | ((mant >> (126 - exp)) + ((mant >> (125 - exp)) & 1)));
	}
	return (uint16_t)(sign | (((exp - 112) << 10) + (mant >> 13) + ((mant >> 12) & 1)));
}

static float px_f16_to_f32(uint16_t h)
{
	uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
	float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY)
		: ldexpf((float)(m | 0x400), (int)e - 25);

	return (h & 0x8000) ? -v : v;
}

void px_encode(uint32_t dtype, const double *v, void *out, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		switch (dtype) {
		case PXOS_DTYPE_FLOAT16: ((uint16_t *)out)[i] = px_f32_to_f16((float)v[i]); break;
		case PXOS_DTYPE_FLOAT32: ((float *)out)[i] = (float)v[i]; break;
		case PXOS_DTYPE_FLOAT64: ((double *)out)[i] = v[i]; break;
		case PXOS_DTYPE_INT32: ((int32_t *)out)[i] = (int32_t)v[i]; break;
		case PXOS_DTYPE_INT64: ((int64_t *)out)[i] = (int64_t)v[i]; break;
		}
	}
}

void px_decode(uint32_t dtype, const void *in, double *v, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		switch (dtype) {
		case PXOS_DTYPE_FLOAT16: v[i] = px_f16_to_f32(((const uint16_t *)in)[i]); break;
		case PXOS_DTYPE_FLOAT32: v[i] = ((const float *)in)[i]; break;
		case PXOS_DTYPE_FLOAT64: v[i] = ((const double *)in)[i]; break;
		case PXOS_DTYPE_INT32: v[i] = ((const int32_t *)in)[i]; break;
		case PXOS_DTYPE_INT64: v[i] = (double)((const int64_t *)in)[i]; break;
		}
	}
}

void px_report(const char *what, int err, const struct pxos_ioc_result *res)
{
	if (res && res->status)
		fprintf(stderr, "pxos: %s: %s [%s: %s]\n", what, strerror(-err),
			px_status_name(res->status), res->message);
	else if (res && res->message[0])
		fprintf(stderr, "pxos: %s: %s (%s)\n", what, strerror(-err), res->message);
	else
		fprintf(stderr, "pxos: %s: %s\n", what, strerror(-err));
}

static int px_ioctl(int fd, unsigned long cmd, void *arg)
{
	if (pxd_is(fd))
		return pxd_ioctl(fd, cmd, arg);
	return ioctl(fd, cmd, arg) < 0 ? -errno : 0;
}

int px_info(int fd, struct pxos_ioc_info *info)
{
	memset(info, 0, sizeof(*info));
	return px_ioctl(fd, PXOS_IOC_INFO, info);
}

int px_alloc(int fd, const struct px_type *t, uint64_t *handle, struct pxos_ioc_result *res)
{
	struct pxos_ioc_alloc a = { .dtype = t->dtype, .rank = t->rank };
	int err;

	memcpy(a.dims, t->dims, sizeof(a.dims));
	err = px_ioctl(fd, PXOS_IOC_ALLOC, &a);
	*handle = a.handle;
	if (res)
		*res = a.res;
	return err;
}

int px_free(int fd, uint64_t handle, struct pxos_ioc_result *res)
{
	struct pxos_ioc_free f = { .handle = handle };
	int err = px_ioctl(fd, PXOS_IOC_FREE, &f);

	if (res)
		*res = f.res;
	return err;
}

static int px_transfer(int fd, unsigned long cmd, uint64_t handle, uint64_t offset, const void *buf,
		       uint64_t len, struct pxos_ioc_result *res)
{
	struct pxos_ioc_transfer t = {
		.handle = handle, .offset = offset, .length = len, .user_ptr = (uintptr_t)buf,
	};
	int err = px_ioctl(fd, cmd, &t);

	if (res)
		*res = t.res;
	return err;
}

int px_write(int fd, uint64_t handle, uint64_t offset, const void *buf, uint64_t len,
	     struct pxos_ioc_result *res)
{
	return px_transfer(fd, PXOS_IOC_WRITE, handle, offset, buf, len, res);
}

int px_read(int fd, uint64_t handle, uint64_t offset, void *buf, uint64_t len,
	    struct pxos_ioc_result *res)
{
	return px_transfer(fd, PXOS_IOC_READ, handle, offset, buf, len, res);
}

int px_tensor(int fd, const struct px_type *t, const double *v, uint64_t *handle,
	      struct pxos_ioc_result *res)
{
	uint64_t n = px_count(t), nbytes = n * px_dtype_size(t->dtype);
	void *bytes;
	int err;

	err = px_alloc(fd, t, handle, res);
	if (err || !v)
		return err;
	bytes = malloc(nbytes);
	if (!bytes)
		return -ENOMEM;
	px_encode(t->dtype, v, bytes, n);
	err = px_write(fd, *handle, 0, bytes, nbytes, res);
	free(bytes);
	return err;
}

int px_compile(int fd, const char *src, size_t len, struct pxos_ioc_compile *out)
{
	memset(out, 0, sizeof(*out));
	out->source_ptr = (uintptr_t)src;
	out->source_len = (uint32_t)len;
	if (len > PXOS_MAX_SOURCE_BYTES)
		return -E2BIG;
	return px_ioctl(fd, PXOS_IOC_COMPILE, out);
}

uint64_t px_kernel_id(const struct pxos_ioc_compile *c, const char *name)
{
	for (uint32_t i = 0; i < c->nkernels; i++)
		if (!name || strcmp(c->kernels[i].name, name) == 0)
			return c->kernels[i].kernel_id;
	return 0;
}

int px_kernel_info(int fd, uint64_t id, struct pxos_ioc_kernel_info *out)
{
	memset(out, 0, sizeof(*out));
	out->kernel_id = id;
	return px_ioctl(fd, PXOS_IOC_KERNEL_INFO, out);
}

void px_bind_buffer(struct pxos_binding *b, const char *name, uint64_t handle)
{
	memset(b, 0, sizeof(*b));
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->kind = PXOS_BIND_BUFFER;
	b->value = handle;
}

void px_bind_f64(struct pxos_binding *b, const char *name, uint32_t dtype, double v)
{
	memset(b, 0, sizeof(*b));
	snprintf(b->name, sizeof(b->name), "%s", name);
	if (dtype == PXOS_DTYPE_INT32 || dtype == PXOS_DTYPE_INT64) {
		int64_t i = (int64_t)v;

		b->kind = PXOS_BIND_SCALAR_I64;
		memcpy(&b->value, &i, 8);
	} else {
		b->kind = PXOS_BIND_SCALAR_F64;
		memcpy(&b->value, &v, 8);
	}
	b->dtype = dtype;
}

static void px_launch_args(struct pxos_ioc_launch *l, uint64_t kernel, const struct pxos_binding *b,
			   uint32_t n)
{
	memset(l, 0, sizeof(*l));
	l->kernel_id = kernel;
	l->bindings_ptr = (uintptr_t)b;
	l->nbindings = n;
	l->priority = PXOS_PRIORITY_DEFAULT;
}

int px_launch(int fd, uint64_t kernel, const struct pxos_binding *b, uint32_t n,
	      uint32_t timeout_ms, struct pxos_ioc_launch *out)
{
	px_launch_args(out, kernel, b, n);
	out->timeout_ms = timeout_ms;
	return px_ioctl(fd, PXOS_IOC_LAUNCH, out);
}

int px_submit(int fd, uint64_t kernel, const struct pxos_binding *b, uint32_t n, uint64_t *token,
	      struct pxos_ioc_result *res)
{
	struct pxos_ioc_launch l;
	int err;

	px_launch_args(&l, kernel, b, n);
	err = px_ioctl(fd, PXOS_IOC_SUBMIT, &l);
	*token = l.token;
	if (res)
		*res = l.res;
	return err;
}

int px_reap(int fd, uint64_t token, int wait, struct pxos_ioc_reap *out)
{
	memset(out, 0, sizeof(*out));
	out->token = token;
	out->flags = wait ? PXOS_REAP_WAIT : 0;
	return px_ioctl(fd, PXOS_IOC_REAP, out);
}

int px_stats(int fd, struct pxos_ioc_stats *out)
{
	memset(out, 0, sizeof(*out));
	return px_ioctl(fd, PXOS_IOC_STATS, out);
}

int px_idle_hint(int fd, int idle, struct pxos_ioc_result *res)
{
	struct pxos_ioc_idle_hint h = { .idle = idle ? 1 : 0 };
	int err = px_ioctl(fd, PXOS_IOC_IDLE_HINT, &h);

	if (res)
		*res = h.res;
	return err;
}

char *px_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;

	if (!f)
		return NULL;
	buf = malloc(PXOS_MAX_SOURCE_BYTES + 2);
	n = buf ? fread(buf, 1, PXOS_MAX_SOURCE_BYTES + 1, f) : 0;
	fclose(f);
	if (buf)
		buf[n] = '\0';
	*len = n;
	return buf;
}

uint64_t px_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
