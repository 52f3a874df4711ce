/* SPDX-License-Identifier: GPL-2.0 */
/* pxos_ioctl.h - the ioctl handlers; each takes the kernel copy of its struct. */
#ifndef PXOS_IOCTL_H
#define PXOS_IOCTL_H

struct pxos_session;

long pxos_ioc_info(struct pxos_session *sess, void *arg);
long pxos_ioc_alloc(struct pxos_session *sess, void *arg);
long pxos_ioc_free(struct pxos_session *sess, void *arg);
long pxos_ioc_write(struct pxos_session *sess, void *arg);
long pxos_ioc_read(struct pxos_session *sess, void *arg);
long pxos_ioc_compile(struct pxos_session *sess, void *arg);
long pxos_ioc_kernel_info(struct pxos_session *sess, void *arg);
long pxos_ioc_kernel_free(struct pxos_session *sess, void *arg);
long pxos_ioc_launch(struct pxos_session *sess, void *arg);
long pxos_ioc_submit(struct pxos_session *sess, void *arg);
long pxos_ioc_reap(struct pxos_session *sess, void *arg);
long pxos_ioc_stats(struct pxos_session *sess, void *arg);
long pxos_ioc_idle_hint(struct pxos_session *sess, void *arg);
long pxos_ioc_model_open(struct pxos_session *sess, void *arg);
long pxos_ioc_model_close(struct pxos_session *sess, void *arg);

#endif /* PXOS_IOCTL_H */
