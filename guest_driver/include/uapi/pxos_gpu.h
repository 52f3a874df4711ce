/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR Apache-2.0 */
/*
 * pxos_gpu.h - the pxOS wire ABI, defined once for both sides.
 *
 * Guest side: the pxos_gpu kernel module and the `pxos` tool include this file.
 * Host side:  virtio_backend reads the text between PXOS_CDEF_BEGIN and PXOS_CDEF_END
 *             with cffi's cdef(), so that block holds only what cffi parses: fixed-width
 *             little-endian fields, enums with explicit values and `#define NAME <integer>`.
 *
 * PXOS commands travel on the control queue of a virtio-gpu device (virtio device ID 16),
 * as vendor command types in 0x7000..0x70ff: a range that the virtio-gpu specification
 * (2D 0x01xx, 3D 0x02xx, cursor 0x03xx, responses 0x11xx/0x12xx) does not use. A
 * backend that is not pxOS answers them with VIRTIO_GPU_RESP_ERR_UNSPEC.
 *
 * One request is one descriptor chain. Its device-readable descriptors, concatenated,
 * hold the command struct followed by the command's payload (WRITE data, COMPILE source,
 * LAUNCH bindings); its device-writable descriptors, concatenated, receive the response
 * struct followed by the response payload (READ data). Descriptors may split anywhere.
 * Every response starts with struct pxos_resp_hdr; the used-ring length is the number
 * of bytes the device wrote. docs/protocol.md specifies every command.
 *
 * hdr.ctx_id carries the guest *session* (one per open file of /dev/pxosN; 0 is the
 * driver itself). Buffers and kernels belong to the session that made them; another
 * session, or another VM, naming them gets PXOS_S_NOT_FOUND.
 *
 * Versioning: a change that keeps every existing struct and meaning bumps
 * PXOS_ABI_MINOR; anything else bumps PXOS_ABI_MAJOR. The device refuses a GET_INFO
 * whose abi_major differs from its own (PXOS_S_UNSUPPORTED).
 */
#ifndef _UAPI_PXOS_GPU_H
#define _UAPI_PXOS_GPU_H

#include <linux/types.h>

/* PXOS_CDEF_BEGIN */

#define PXOS_ABI_MAJOR 1
#define PXOS_ABI_MINOR 0
#define PXOS_MAGIC 0x534f5850 /* "PXOS" read as a little-endian u32 */

/* ---- Limits: every size a guest controls is capped by one of these. ---- */
#define PXOS_MAX_RANK 8               /* tensor rank, as the language allows */
#define PXOS_MAX_NAME 64              /* kernel / param names, NUL included */
#define PXOS_MAX_MESSAGE 128          /* error text in a response, NUL included */
#define PXOS_MAX_BINDINGS 32          /* bindings in one LAUNCH */
#define PXOS_MAX_PARAMS 32            /* params of one kernel reported by KERNEL_INFO */
#define PXOS_MAX_KERNELS 16           /* kernels in one COMPILE */
#define PXOS_MAX_DIAGS 16             /* diagnostics returned by one failed COMPILE */
#define PXOS_MAX_SOURCE_BYTES 65536   /* COMPILE source text */
#define PXOS_MAX_TRANSFER_BYTES 8388608      /* data of one WRITE or READ (8 MiB) */
#define PXOS_MAX_BUFFER_BYTES 2147483648     /* one buffer (2 GiB) */
#define PXOS_MAX_REQUEST_BYTES 8392704       /* readable bytes of one chain: 8 MiB + 4 KiB */

/* ---- Command types (struct pxos_ctrl_hdr.type) ---- */
enum pxos_cmd_type {
	PXOS_CMD_GET_INFO = 0x7000,
	PXOS_CMD_ALLOC = 0x7001,
	PXOS_CMD_FREE = 0x7002,
	PXOS_CMD_WRITE = 0x7003,
	PXOS_CMD_READ = 0x7004,
	PXOS_CMD_COMPILE = 0x7005,
	PXOS_CMD_KERNEL_INFO = 0x7006,
	PXOS_CMD_KERNEL_FREE = 0x7007,
	PXOS_CMD_LAUNCH = 0x7008,
	PXOS_CMD_STATS = 0x7009,
	PXOS_CMD_IDLE_HINT = 0x700a,
	PXOS_CMD_SESSION_CLOSE = 0x700b,
};

/* Every PXOS response has this type; the outcome is in pxos_resp_hdr.status. */
#define PXOS_RESP 0x7100

enum pxos_status {
	PXOS_S_OK = 0,
	PXOS_S_INVALID = 1,          /* malformed request: sizes, names, dtypes, offsets */
	PXOS_S_NOT_FOUND = 2,        /* no such handle or kernel in this VM and session */
	PXOS_S_QUOTA = 3,            /* over the VM's memory quota */
	PXOS_S_NO_DEVICE_MEMORY = 4, /* device pool and host backing cannot hold it */
	PXOS_S_COMPILE = 5,          /* program rejected; see the diagnostics */
	PXOS_S_BIND = 6,             /* bindings do not fit the kernel (missing, shape, dtype) */
	PXOS_S_EXEC = 7,             /* the executor failed while running the launch */
	PXOS_S_CANCELLED = 8,        /* the launch was cancelled (reset, session closed) */
	PXOS_S_BUSY = 9,             /* too many requests in flight; retry */
	PXOS_S_TOO_LARGE = 10,       /* a size over one of the PXOS_MAX_* limits */
	PXOS_S_UNSUPPORTED = 11,     /* unknown command, or an ABI major this device lacks */
	PXOS_S_INTERNAL = 12,        /* a host bug; logged and counted on the host */
	PXOS_S_EXISTS = 13,
};

enum pxos_dtype {
	PXOS_DTYPE_FLOAT16 = 1,
	PXOS_DTYPE_FLOAT32 = 2,
	PXOS_DTYPE_FLOAT64 = 3,
	PXOS_DTYPE_INT32 = 4,
	PXOS_DTYPE_INT64 = 5,
};

enum pxos_class {
	PXOS_CLASS_NONE = 0,         /* no hint: the scheduler's classifier decides */
	PXOS_CLASS_REALTIME = 1,
	PXOS_CLASS_INTERACTIVE = 2,
	PXOS_CLASS_THROUGHPUT = 3,
	PXOS_CLASS_BATCH = 4,
};

enum pxos_direction {
	PXOS_DIR_IN = 1,
	PXOS_DIR_OUT = 2,
	PXOS_DIR_INOUT = 3,
};

enum pxos_binding_kind {
	PXOS_BIND_BUFFER = 1,        /* value = buffer handle */
	PXOS_BIND_SCALAR_F64 = 2,    /* value = IEEE-754 binary64 bits */
	PXOS_BIND_SCALAR_I64 = 3,    /* value = two's complement int64 */
};

#define PXOS_PRIORITY_DEFAULT 0xffffffff /* LAUNCH.priority: use the kernel's GPU_PRIORITY */
#define PXOS_RANK_ANY 0xffffffff         /* KERNEL_INFO: a param declared float[] */
#define PXOS_DIM_SYMBOLIC 0xffffffffffffffff /* KERNEL_INFO: a dim written as a name */

/* Identical in layout to struct virtio_gpu_ctrl_hdr (include/uapi/linux/virtio_gpu.h). */
struct pxos_ctrl_hdr {
	__le32 type;
	__le32 flags;
	__le64 fence_id;
	__le32 ctx_id;               /* the guest session */
	__u8 ring_idx;
	__u8 padding[3];
};

struct pxos_resp_hdr {
	struct pxos_ctrl_hdr hdr;    /* type = PXOS_RESP; fence_id and ctx_id echoed */
	__le32 status;               /* enum pxos_status */
	__le32 payload_len;          /* bytes after the command's fixed response struct */
	char message[PXOS_MAX_MESSAGE]; /* NUL-terminated detail; "" on success */
};

/* GET_INFO: is this a pxOS device, which ABI, which limits, who am I. */
struct pxos_cmd_get_info {
	struct pxos_ctrl_hdr hdr;
	__le16 abi_major;            /* the guest's PXOS_ABI_MAJOR / MINOR */
	__le16 abi_minor;
	__le32 padding;
};

struct pxos_resp_info {
	struct pxos_resp_hdr r;
	__le32 magic;                /* PXOS_MAGIC */
	__le16 abi_major;
	__le16 abi_minor;
	__le32 vm_id;
	__le32 flags;
	__le64 memory_quota;         /* bytes */
	__le64 memory_used;          /* bytes */
	__le32 compute_share_pct;
	__le32 compute_cap_pct;      /* 0: no cap */
	__le32 max_rank;
	__le32 max_bindings;
	__le32 max_source_bytes;
	__le32 max_name;
	__le64 max_transfer_bytes;
	__le64 max_buffer_bytes;
	__le32 max_inflight;         /* requests this VM may have in flight */
	__le32 max_kernels;
	char backend[16];            /* "numpy" or "cupy" */
	char device_name[64];        /* e.g. "NVIDIA H100 80GB HBM3" or "cpu" */
};

/* ALLOC: a tensor buffer of dtype and shape; rank 0 is a scalar. */
struct pxos_cmd_alloc {
	struct pxos_ctrl_hdr hdr;
	__le32 dtype;                /* enum pxos_dtype */
	__le32 rank;                 /* <= PXOS_MAX_RANK */
	__le64 dims[PXOS_MAX_RANK];  /* dims[rank..] must be 0 */
};

struct pxos_resp_alloc {
	struct pxos_resp_hdr r;
	__le64 handle;               /* never 0; unique across the host */
	__le64 nbytes;
};

struct pxos_cmd_free {
	struct pxos_ctrl_hdr hdr;
	__le64 handle;
};

/* WRITE: `length` bytes follow this struct in the readable part of the chain.
 * READ: `length` bytes follow struct pxos_resp_hdr in the writable part. */
struct pxos_cmd_transfer {
	struct pxos_ctrl_hdr hdr;
	__le64 handle;
	__le64 offset;               /* bytes into the buffer */
	__le64 length;               /* <= PXOS_MAX_TRANSFER_BYTES */
};

/* COMPILE: `source_len` bytes of UTF-8 source follow this struct. */
struct pxos_cmd_compile {
	struct pxos_ctrl_hdr hdr;
	__le32 source_len;           /* <= PXOS_MAX_SOURCE_BYTES */
	__le32 padding;
};

struct pxos_kernel_desc {
	__le64 kernel_id;            /* never 0 */
	__le32 nparams;
	__le32 padding;
	char name[PXOS_MAX_NAME];
};

struct pxos_diag {
	__le32 line;                 /* 1-based; 0 when the error has no position */
	__le32 column;
	char code[24];
	char message[PXOS_MAX_MESSAGE];
};

struct pxos_resp_compile {
	struct pxos_resp_hdr r;
	__le32 nkernels;             /* on PXOS_S_OK */
	__le32 ndiags;               /* on PXOS_S_COMPILE; at most PXOS_MAX_DIAGS reported */
	struct pxos_kernel_desc kernels[PXOS_MAX_KERNELS];
	struct pxos_diag diags[PXOS_MAX_DIAGS];
};

struct pxos_cmd_kernel {
	struct pxos_ctrl_hdr hdr;    /* KERNEL_INFO and KERNEL_FREE */
	__le64 kernel_id;
};

struct pxos_param_desc {
	char name[PXOS_MAX_NAME];
	__le32 dtype;                /* enum pxos_dtype */
	__le32 direction;            /* enum pxos_direction */
	__le32 rank;                 /* PXOS_RANK_ANY for float[] */
	__le32 padding;
	__le64 dims[PXOS_MAX_RANK];  /* PXOS_DIM_SYMBOLIC where written as a name */
};

struct pxos_resp_kernel_info {
	struct pxos_resp_hdr r;
	__le64 kernel_id;
	__le32 nparams;
	__le32 class_hint;           /* enum pxos_class */
	__le32 priority;             /* PXOS_PRIORITY_DEFAULT when not written */
	__le32 nstatements;
	char name[PXOS_MAX_NAME];
	struct pxos_param_desc params[PXOS_MAX_PARAMS];
};

/* LAUNCH: `nbindings` struct pxos_binding follow this struct. */
struct pxos_binding {
	char name[PXOS_MAX_NAME];    /* the param's name */
	__le32 kind;                 /* enum pxos_binding_kind */
	__le32 dtype;                /* scalars: enum pxos_dtype of the value; else 0 */
	__le64 value;
};

struct pxos_cmd_launch {
	struct pxos_ctrl_hdr hdr;
	__le64 kernel_id;
	__le32 nbindings;            /* <= PXOS_MAX_BINDINGS */
	__le32 priority;             /* 0..100, or PXOS_PRIORITY_DEFAULT */
	__le32 class_hint;           /* enum pxos_class */
	__le32 flags;                /* 0 */
};

struct pxos_resp_launch {
	struct pxos_resp_hdr r;
	__le64 launch_id;
	__le64 device_ns;            /* measured device time, charged to the VM */
	__le64 queue_ns;             /* from arrival to start */
	__le64 total_ns;             /* from arrival to completion */
	__le32 class_assigned;       /* enum pxos_class the scheduler ran it as */
	__le32 padding;
};

struct pxos_cmd_stats {
	struct pxos_ctrl_hdr hdr;
};

struct pxos_resp_stats {
	struct pxos_resp_hdr r;
	__le64 memory_quota;
	__le64 memory_used;          /* live buffers + temporaries of the running launch */
	__le64 memory_device_bytes;  /* of which resident on the device */
	__le64 memory_host_bytes;    /* of which backed by host RAM only */
	__le64 launches_total;
	__le64 launches_failed;
	__le64 device_ns_total;
	__le32 queue_depth;
	__le32 inflight;
	__le32 compute_share_pct;
	__le32 compute_cap_pct;
	__le32 achieved_share_ppm;   /* share of busy device time over the recent window */
	__le32 nbuffers;
	__le32 nkernels;
	__le32 padding;
};

struct pxos_cmd_idle_hint {
	struct pxos_ctrl_hdr hdr;
	__le32 idle;                 /* 1: going idle, write my buffers back; 0: busy again */
	__le32 padding;
};

/* SESSION_CLOSE: free every buffer and kernel of session hdr.ctx_id, cancel its queue. */
struct pxos_cmd_session_close {
	struct pxos_ctrl_hdr hdr;
};

struct pxos_resp_session_close {
	struct pxos_resp_hdr r;
	__le64 bytes_freed;
	__le32 buffers_freed;
	__le32 kernels_freed;
	__le32 launches_cancelled;
	__le32 padding;
};

/* PXOS_CDEF_END */

#if defined(__KERNEL__) || defined(__STDC_VERSION__)
/* Layout checks for C compilers; the host checks the same sizes through cffi. */
_Static_assert(sizeof(struct pxos_ctrl_hdr) == 24, "pxos_ctrl_hdr");
_Static_assert(sizeof(struct pxos_resp_hdr) == 160, "pxos_resp_hdr");
_Static_assert(sizeof(struct pxos_resp_info) == 160 + 160, "pxos_resp_info");
_Static_assert(sizeof(struct pxos_cmd_alloc) == 24 + 8 + 64, "pxos_cmd_alloc");
_Static_assert(sizeof(struct pxos_cmd_transfer) == 48, "pxos_cmd_transfer");
_Static_assert(sizeof(struct pxos_binding) == 80, "pxos_binding");
_Static_assert(sizeof(struct pxos_cmd_launch) == 48, "pxos_cmd_launch");
_Static_assert(sizeof(struct pxos_resp_launch) == 160 + 40, "pxos_resp_launch");
_Static_assert(sizeof(struct pxos_param_desc) == 144, "pxos_param_desc");
#endif

/* ---- /dev/pxosN ioctls (guest user space <-> pxos_gpu.ko) follow below. ---- */

#endif /* _UAPI_PXOS_GPU_H */
