// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_model.c - PXOS_IOC_MODEL_OPEN / PXOS_IOC_MODEL_CLOSE: open a model the host's
 * operator loaded (its tensors are read-only buffers shared by every VM) and close it.
 */
#include <linux/string.h>

#include "pxos_drv.h"
#include "pxos_ioctl.h"

long pxos_ioc_model_open(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_model_open *io = arg;
	struct pxos_cmd_model_open *cmd;
	struct pxos_resp_model_open *r;
	struct pxos_req *req;
	size_t len;
	long err;

	len = strnlen(io->name, sizeof(io->name));
	if (len == 0 || len == sizeof(io->name))
		return -EINVAL; /* empty, or not NUL-terminated within PXOS_MAX_NAME */
	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_MODEL_OPEN, sizeof(*cmd), sizeof(*r));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	memset(cmd->name, 0, sizeof(cmd->name));
	memcpy(cmd->name, io->name, len);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS, sizeof(*r), &io->res);
	if (!err) {
		r = req->resp;
		io->model_id = le64_to_cpu(r->model_id);
		io->meta_handle = le64_to_cpu(r->meta_handle);
		io->meta_bytes = le64_to_cpu(r->meta_bytes);
		io->model_bytes = le64_to_cpu(r->model_bytes);
		io->ntensors = le32_to_cpu(r->ntensors);
	}
	if (req)
		pxos_req_free(req);
	return err;
}

long pxos_ioc_model_close(struct pxos_session *sess, void *arg)
{
	struct pxos_ioc_model_close *io = arg;
	struct pxos_cmd_model_close *cmd;
	struct pxos_req *req;
	long err;

	req = pxos_req_alloc(sess->dev, sess, PXOS_CMD_MODEL_CLOSE, sizeof(*cmd),
			     sizeof(struct pxos_resp_hdr));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->model_id = cpu_to_le64(io->model_id);
	err = pxos_req_call(&req, PXOS_WAIT_KILLABLE, PXOS_CALL_TIMEOUT_MS,
			    sizeof(struct pxos_resp_hdr), &io->res);
	if (req)
		pxos_req_free(req);
	return err;
}
