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
#define PXOS_ABI_MINOR 3
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
	PXOS_CMD_MODEL_OPEN = 0x700c,     /* ABI 1.1 */
	PXOS_CMD_MODEL_CLOSE = 0x700d,    /* ABI 1.1 */
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
	PXOS_S_RANGE = 14,           /* a launch's runtime index or offset is out of range (1.1) */
	PXOS_S_READ_ONLY = 15,       /* a write to a read-only buffer: a shared model's tensor (1.1) */
	PXOS_S_VM_GONE = 16,         /* the operator removed this VM from pxos-hvd: nothing more will run (1.2) */
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

/*
 * MODEL_OPEN (ABI 1.1): open a model the operator loaded into the daemon, by name, for
 * session hdr.ctx_id. Its tensors are read-only buffers shared by every VM (a launch may
 * bind them as inputs; WRITE, FREE and output bindings get PXOS_S_READ_ONLY). Their
 * handles, dtypes and shapes, and the model's configuration and tokenizer, are listed in
 * the model's metadata: meta_bytes of UTF-8 JSON at the start of the read-only buffer
 * meta_handle (READ it). MODEL_CLOSE, SESSION_CLOSE and a device reset close it.
 */
struct pxos_cmd_model_open {
	struct pxos_ctrl_hdr hdr;
	char name[PXOS_MAX_NAME];    /* NUL-terminated */
};

struct pxos_resp_model_open {
	struct pxos_resp_hdr r;
	__le64 model_id;             /* never 0 */
	__le64 meta_handle;          /* read-only buffer holding the metadata JSON */
	__le64 meta_bytes;           /* bytes of JSON (the buffer is zero-padded after them) */
	__le64 model_bytes;          /* bytes of all its tensors, held once for every VM */
	__le32 ntensors;
	__le32 padding;
};

struct pxos_cmd_model_close {
	struct pxos_ctrl_hdr hdr;
	__le64 model_id;
};

/*
 * The DRM transport (docs/protocol.md, "DRM transport"): the same requests, carried by
 * Linux's in-tree virtio_gpu driver instead of pxos_gpu.ko. The device offers VIRGL and
 * one capset, PXOS_CAPSET_ID, whose data is struct pxos_capset. A guest process opens
 * /dev/dri/renderD128 (one virtio-gpu context = one pxOS session) and sends each request
 * with DRM_IOCTL_VIRTGPU_EXECBUFFER, which reaches the device as VIRTIO_GPU_CMD_SUBMIT_3D:
 * its bytes are struct pxos_drm_submit followed by the request exactly as on the control
 * queue (struct pxos_ctrl_hdr with only `type` set, the command struct, its payload). The
 * response (and READ data after it) is written into the backing pages of the 3D buffer
 * resource reply_resource, from reply_offset, before the submit's fence signals. A WRITE
 * may instead leave its data in the resource data_resource (from data_offset): the
 * request then ends with its struct, and the device reads the data from those pages.
 */
#define PXOS_CAPSET_ID 24            /* <= 31: 6.1 kernels build their capset mask in 32 bits */
#define PXOS_CAPSET_VERSION 1

struct pxos_capset {
	__le32 magic;                /* PXOS_MAGIC */
	__le16 abi_major;
	__le16 abi_minor;
	__le32 max_request_bytes;    /* PXOS_MAX_REQUEST_BYTES: the request after the envelope */
	__le32 max_reply_bytes;      /* largest reply a resource needs room for (KERNEL_INFO or READ) */
};

struct pxos_drm_submit {
	__le32 magic;                /* PXOS_MAGIC: anything else is not a pxOS submit */
	__le16 abi_major;            /* PXOS_ABI_MAJOR of the sender */
	__le16 abi_minor;
	__le32 reply_resource;       /* resource id attached to this context, with backing */
	__le32 data_resource;        /* 0, or (WRITE only) the resource holding the data */
	__le64 reply_offset;         /* where in reply_resource the response starts */
	__le64 data_offset;          /* where in data_resource the data starts */
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
_Static_assert(sizeof(struct pxos_cmd_model_open) == 24 + 64, "pxos_cmd_model_open");
_Static_assert(sizeof(struct pxos_resp_model_open) == 160 + 40, "pxos_resp_model_open");
_Static_assert(sizeof(struct pxos_cmd_model_close) == 32, "pxos_cmd_model_close");
_Static_assert(sizeof(struct pxos_capset) == 16, "pxos_capset");
_Static_assert(sizeof(struct pxos_drm_submit) == 32, "pxos_drm_submit");
#endif

/* ---- /dev/pxosN ioctls (guest user space <-> pxos_gpu.ko) follow below. ---- */

#include <linux/ioctl.h>

/*
 * Each open file of /dev/pxosN is one session (its id travels in hdr.ctx_id). Every
 * ioctl struct is fixed-width with explicit padding, and ends in struct pxos_ioc_result:
 * when the device answered, `status` is its enum pxos_status and `message` its text, and
 * the struct is copied back even when the ioctl fails. The ioctl's return value is 0 on
 * PXOS_S_OK, else -1 with errno (see pxos_status_errno() in the module):
 * EINVAL INVALID/BIND, ENOENT NOT_FOUND, EDQUOT QUOTA, ENOMEM NO_DEVICE_MEMORY,
 * EBADMSG COMPILE, EIO EXEC/INTERNAL, ECANCELED CANCELLED, EBUSY BUSY, E2BIG TOO_LARGE,
 * EOPNOTSUPP UNSUPPORTED, EEXIST EXISTS, ERANGE RANGE, EROFS READ_ONLY; ETIMEDOUT/EINTR for a launch that did not finish
 * in time or was interrupted (it may still run on the host), ENODEV once the device is gone.
 * The struct sizes are part of the ioctl numbers; a changed struct gets a new number and
 * bumps PXOS_IOCTL_VERSION.
 */
#define PXOS_IOCTL_VERSION 1
#define PXOS_IOC_MAGIC 0xE6

#define PXOS_LAUNCH_TIMEOUT_DEFAULT_MS 60000   /* timeout_ms = 0 */
#define PXOS_LAUNCH_TIMEOUT_MAX_MS 3600000     /* longer waits are refused: poll instead */
#define PXOS_MAX_SUBMITTED 64                  /* un-reaped submits per session */

struct pxos_ioc_result {
	__u32 status;                /* enum pxos_status; 0 when the device was not asked */
	__u32 padding;
	char message[PXOS_MAX_MESSAGE];
};

/* PXOS_IOC_INFO: a fresh GET_INFO, plus what the driver knows. */
struct pxos_ioc_info {
	__u32 ioctl_version;         /* PXOS_IOCTL_VERSION of the module */
	__u32 session_id;            /* this file's hdr.ctx_id */
	__u16 abi_major;             /* the device's */
	__u16 abi_minor;
	__u32 vm_id;
	__u64 memory_quota;
	__u64 memory_used;
	__u32 compute_share_pct;
	__u32 compute_cap_pct;
	__u32 max_rank;
	__u32 max_bindings;
	__u32 max_source_bytes;
	__u32 max_name;
	__u64 max_transfer_bytes;
	__u64 max_buffer_bytes;
	__u32 max_inflight;
	__u32 max_kernels;
	char backend[16];
	char device_name[64];
	struct pxos_ioc_result res;
};

struct pxos_ioc_alloc {
	__u32 dtype;                 /* in: enum pxos_dtype */
	__u32 rank;                  /* in: <= PXOS_MAX_RANK */
	__u64 dims[PXOS_MAX_RANK];   /* in: dims[rank..] must be 0 */
	__u64 handle;                /* out */
	__u64 nbytes;                /* out */
	struct pxos_ioc_result res;
};

struct pxos_ioc_free {
	__u64 handle;                /* in */
	struct pxos_ioc_result res;
};

/* PXOS_IOC_WRITE / PXOS_IOC_READ: any length; the driver splits it into requests of at
 * most PXOS_MAX_TRANSFER_BYTES. `done` says how many bytes moved before an error. */
struct pxos_ioc_transfer {
	__u64 handle;                /* in */
	__u64 offset;                /* in: bytes into the buffer */
	__u64 length;                /* in: <= PXOS_MAX_BUFFER_BYTES */
	__u64 user_ptr;              /* in: the caller's bytes */
	__u64 done;                  /* out */
	struct pxos_ioc_result res;
};

struct pxos_ioc_compile {
	__u64 source_ptr;            /* in: UTF-8 text */
	__u32 source_len;            /* in: <= PXOS_MAX_SOURCE_BYTES */
	__u32 nkernels;              /* out, on success */
	__u32 ndiags;                /* out, on PXOS_S_COMPILE */
	__u32 padding;
	struct pxos_kernel_desc kernels[PXOS_MAX_KERNELS];
	struct pxos_diag diags[PXOS_MAX_DIAGS];
	struct pxos_ioc_result res;
};

struct pxos_ioc_kernel_info {
	__u64 kernel_id;             /* in */
	__u32 nparams;               /* out from here on */
	__u32 class_hint;
	__u32 priority;
	__u32 nstatements;
	char name[PXOS_MAX_NAME];
	struct pxos_param_desc params[PXOS_MAX_PARAMS];
	struct pxos_ioc_result res;
};

struct pxos_ioc_kernel_free {
	__u64 kernel_id;             /* in */
	struct pxos_ioc_result res;
};

/* PXOS_IOC_LAUNCH waits for the result; PXOS_IOC_SUBMIT returns at once with a token,
 * poll() reports POLLIN when a submitted launch completed, PXOS_IOC_REAP collects it. */
struct pxos_ioc_launch {
	__u64 kernel_id;             /* in */
	__u64 bindings_ptr;          /* in: nbindings struct pxos_binding */
	__u32 nbindings;             /* in: <= PXOS_MAX_BINDINGS */
	__u32 priority;              /* in: 0..100 or PXOS_PRIORITY_DEFAULT */
	__u32 class_hint;            /* in: enum pxos_class */
	__u32 timeout_ms;            /* in, LAUNCH only: 0 = default; <= MAX */
	__u64 token;                 /* out, SUBMIT: names this launch to REAP */
	__u64 launch_id;             /* out, LAUNCH: from the device */
	__u64 device_ns;
	__u64 queue_ns;
	__u64 total_ns;
	__u32 class_assigned;
	__u32 padding;
	struct pxos_ioc_result res;
};

#define PXOS_REAP_WAIT 0x1           /* block (interruptibly) until one completes */

struct pxos_ioc_reap {
	__u64 token;                 /* in: 0 = any completed submit; out: the one reaped */
	__u32 flags;                 /* in: PXOS_REAP_* */
	__u32 pending;               /* out: submits of this session not yet reaped */
	__u64 launch_id;             /* out, as struct pxos_ioc_launch */
	__u64 device_ns;
	__u64 queue_ns;
	__u64 total_ns;
	__u32 class_assigned;
	__u32 padding;
	struct pxos_ioc_result res;  /* the launch's own outcome */
};

struct pxos_ioc_stats {
	__u64 memory_quota;          /* out: the device's STATS for this VM */
	__u64 memory_used;
	__u64 memory_device_bytes;
	__u64 memory_host_bytes;
	__u64 launches_total;
	__u64 launches_failed;
	__u64 device_ns_total;
	__u32 queue_depth;
	__u32 inflight;
	__u32 compute_share_pct;
	__u32 compute_cap_pct;
	__u32 achieved_share_ppm;
	__u32 nbuffers;
	__u32 nkernels;
	__u32 sessions_open;         /* out: the driver's own figures for this device */
	__u64 requests_total;
	__u64 requests_failed;       /* transport-level: interrupted, timed out, device gone */
	__u64 bytes_written;
	__u64 bytes_read;
	struct pxos_ioc_result res;
};

struct pxos_ioc_idle_hint {
	__u32 idle;                  /* in: 1 going idle, 0 busy again */
	__u32 padding;
	struct pxos_ioc_result res;
};

/* PXOS_IOC_MODEL_OPEN / PXOS_IOC_MODEL_CLOSE (ioctl version 1, ABI 1.1). */
struct pxos_ioc_model_open {
	char name[PXOS_MAX_NAME];    /* in: NUL-terminated */
	__u64 model_id;              /* out, as struct pxos_resp_model_open */
	__u64 meta_handle;
	__u64 meta_bytes;
	__u64 model_bytes;
	__u32 ntensors;
	__u32 padding;
	struct pxos_ioc_result res;
};

struct pxos_ioc_model_close {
	__u64 model_id;              /* in */
	struct pxos_ioc_result res;
};

#define PXOS_IOC_INFO        _IOWR(PXOS_IOC_MAGIC, 0x00, struct pxos_ioc_info)
#define PXOS_IOC_ALLOC       _IOWR(PXOS_IOC_MAGIC, 0x01, struct pxos_ioc_alloc)
#define PXOS_IOC_FREE        _IOWR(PXOS_IOC_MAGIC, 0x02, struct pxos_ioc_free)
#define PXOS_IOC_WRITE       _IOWR(PXOS_IOC_MAGIC, 0x03, struct pxos_ioc_transfer)
#define PXOS_IOC_READ        _IOWR(PXOS_IOC_MAGIC, 0x04, struct pxos_ioc_transfer)
#define PXOS_IOC_COMPILE     _IOWR(PXOS_IOC_MAGIC, 0x05, struct pxos_ioc_compile)
#define PXOS_IOC_KERNEL_INFO _IOWR(PXOS_IOC_MAGIC, 0x06, struct pxos_ioc_kernel_info)
#define PXOS_IOC_KERNEL_FREE _IOWR(PXOS_IOC_MAGIC, 0x07, struct pxos_ioc_kernel_free)
#define PXOS_IOC_LAUNCH      _IOWR(PXOS_IOC_MAGIC, 0x08, struct pxos_ioc_launch)
#define PXOS_IOC_SUBMIT      _IOWR(PXOS_IOC_MAGIC, 0x09, struct pxos_ioc_launch)
#define PXOS_IOC_REAP        _IOWR(PXOS_IOC_MAGIC, 0x0a, struct pxos_ioc_reap)
#define PXOS_IOC_STATS       _IOWR(PXOS_IOC_MAGIC, 0x0b, struct pxos_ioc_stats)
#define PXOS_IOC_IDLE_HINT   _IOWR(PXOS_IOC_MAGIC, 0x0c, struct pxos_ioc_idle_hint)
#define PXOS_IOC_MODEL_OPEN  _IOWR(PXOS_IOC_MAGIC, 0x0d, struct pxos_ioc_model_open)
#define PXOS_IOC_MODEL_CLOSE _IOWR(PXOS_IOC_MAGIC, 0x0e, struct pxos_ioc_model_close)

#if defined(__KERNEL__) || defined(__STDC_VERSION__)
_Static_assert(sizeof(struct pxos_ioc_result) == 136, "pxos_ioc_result");
_Static_assert(sizeof(struct pxos_ioc_info) == 160 + 136, "pxos_ioc_info");
_Static_assert(sizeof(struct pxos_ioc_alloc) == 88 + 136, "pxos_ioc_alloc");
_Static_assert(sizeof(struct pxos_ioc_free) == 8 + 136, "pxos_ioc_free");
_Static_assert(sizeof(struct pxos_ioc_transfer) == 40 + 136, "pxos_ioc_transfer");
_Static_assert(sizeof(struct pxos_ioc_compile) == 24 + 16 * 80 + 16 * 160 + 136, "pxos_ioc_compile");
_Static_assert(sizeof(struct pxos_ioc_kernel_info) == 88 + 32 * 144 + 136, "pxos_ioc_kernel_info");
_Static_assert(sizeof(struct pxos_ioc_kernel_free) == 8 + 136, "pxos_ioc_kernel_free");
_Static_assert(sizeof(struct pxos_ioc_launch) == 80 + 136, "pxos_ioc_launch");
_Static_assert(sizeof(struct pxos_ioc_reap) == 56 + 136, "pxos_ioc_reap");
_Static_assert(sizeof(struct pxos_ioc_stats) == 120 + 136, "pxos_ioc_stats");
_Static_assert(sizeof(struct pxos_ioc_idle_hint) == 8 + 136, "pxos_ioc_idle_hint");
_Static_assert(sizeof(struct pxos_ioc_model_open) == 64 + 40 + 136, "pxos_ioc_model_open");
_Static_assert(sizeof(struct pxos_ioc_model_close) == 8 + 136, "pxos_ioc_model_close");
#endif

#endif /* _UAPI_PXOS_GPU_H */
