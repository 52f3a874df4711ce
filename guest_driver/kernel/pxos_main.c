// SPDX-License-Identifier: GPL-2.0
/*
 * pxos_main.c - the pxos_gpu virtio driver: binds to virtio-gpu devices (ID 16), asks
 * each for PXOS GET_INFO, and gives the ones that answer as pxOS backends a /dev/pxosN.
 * A device that is not pxOS (a display virtio-gpu) is left alone with -ENODEV.
 *
 * Queue 0 is the control queue that carries PXOS commands; queue 1, the cursor queue,
 * exists because the device has it and is never used. The wire ABI is
 * include/uapi/pxos_gpu.h; docs/protocol.md specifies every command.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>

#include "pxos_drv.h"

static DEFINE_IDA(pxos_index_ida);

static void pxos_dev_release(struct kref *ref)
{
	struct pxos_dev *dev = container_of(ref, struct pxos_dev, ref);

	ida_destroy(&dev->sess_ida);
	if (dev->index >= 0)
		ida_free(&pxos_index_ida, dev->index);
	kfree(dev);
}

void pxos_dev_put(struct pxos_dev *dev)
{
	kref_put(&dev->ref, pxos_dev_release);
}

/* GET_INFO on the driver's own context: is this a pxOS device we can speak to? */
static int pxos_probe_info(struct pxos_dev *dev)
{
	struct device *d = &dev->vdev->dev;
	struct pxos_cmd_get_info *cmd;
	struct pxos_resp_info *info;
	struct pxos_req *req;
	u32 type;
	int err;

	req = pxos_req_alloc(dev, NULL, PXOS_CMD_GET_INFO, sizeof(*cmd), sizeof(*info));
	if (!req)
		return -ENOMEM;
	cmd = req->cmd;
	cmd->abi_major = cpu_to_le16(PXOS_ABI_MAJOR);
	cmd->abi_minor = cpu_to_le16(PXOS_ABI_MINOR);

	err = pxos_req_send(req, PXOS_WAIT_UNINTERRUPTIBLE);
	if (err) {
		pxos_req_free(req);
		return err;
	}
	if (pxos_req_wait(req, PXOS_WAIT_UNINTERRUPTIBLE, PXOS_PROBE_TIMEOUT_MS)) {
		dev_info(d, "not a pxOS device: no answer to GET_INFO in %d ms\n",
			 PXOS_PROBE_TIMEOUT_MS);
		return -ENODEV; /* abandoned; the reset in probe's clean-up takes it back */
	}

	info = req->resp;
	type = req->used_len >= sizeof(struct pxos_ctrl_hdr) ? le32_to_cpu(info->r.hdr.type) : 0;
	if (type != PXOS_RESP || req->used_len < sizeof(info->r)) {
		dev_info(d, "not a pxOS device: GET_INFO answered with type 0x%x (%u bytes)\n",
			 type, req->used_len);
		err = -ENODEV;
	} else if (le32_to_cpu(info->r.status) != PXOS_S_OK) {
		info->r.message[PXOS_MAX_MESSAGE - 1] = '\0';
		dev_info(d, "pxOS device refused GET_INFO (status %u: %s)\n",
			 le32_to_cpu(info->r.status), info->r.message);
		err = -ENODEV;
	} else if (req->used_len < sizeof(*info) || le32_to_cpu(info->magic) != PXOS_MAGIC) {
		dev_info(d, "not a pxOS device: bad GET_INFO answer (%u bytes, magic 0x%x)\n",
			 req->used_len, le32_to_cpu(info->magic));
		err = -ENODEV;
	} else if (le16_to_cpu(info->abi_major) != PXOS_ABI_MAJOR) {
		dev_info(d, "pxOS ABI %u.%u is not ours (%u.%u)\n", le16_to_cpu(info->abi_major),
			 le16_to_cpu(info->abi_minor), PXOS_ABI_MAJOR, PXOS_ABI_MINOR);
		err = -ENODEV;
	} else {
		dev->info = *info;
		dev->info.backend[sizeof(dev->info.backend) - 1] = '\0';
		dev->info.device_name[sizeof(dev->info.device_name) - 1] = '\0';
		err = 0;
	}
	pxos_req_free(req);
	return err;
}

/*
 * Negotiate only what we use. The driver never resets a single ring, so it does not ack
 * VIRTIO_F_RING_RESET, which QEMU offers on its own for vhost-user devices whether or not
 * the backend does (a backend may rightly refuse a bit it never offered).
 */
static int pxos_validate(struct virtio_device *vdev)
{
#ifdef VIRTIO_F_RING_RESET
	__virtio_clear_bit(vdev, VIRTIO_F_RING_RESET);
#endif
	return 0;
}

static int pxos_probe(struct virtio_device *vdev)
{
	vq_callback_t *callbacks[PXOS_NVQS] = { pxos_ctrlq_done, NULL };
	static const char * const names[PXOS_NVQS] = { "control", "cursor" };
	struct virtqueue *vqs[PXOS_NVQS];
	struct pxos_dev *dev;
	int err;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev) {
		err = -ENOMEM;
		goto err_alloc;
	}
	kref_init(&dev->ref);
	spin_lock_init(&dev->lock);
	init_waitqueue_head(&dev->space_wq);
	INIT_LIST_HEAD(&dev->sessions);
	INIT_DELAYED_WORK(&dev->watch, pxos_watch);
	ida_init(&dev->sess_ida);
	dev->index = -1;
	dev->vdev = vdev;
	vdev->priv = dev;

	err = ida_alloc(&pxos_index_ida, GFP_KERNEL);
	if (err < 0)
		goto err_index;
	dev->index = err;
	snprintf(dev->name, sizeof(dev->name), "pxos%d", dev->index);

	err = virtio_find_vqs(vdev, PXOS_NVQS, vqs, callbacks, names, NULL);
	if (err)
		goto err_vqs;
	dev->ctrlq = vqs[PXOS_CTRLQ];
	virtio_device_ready(vdev);

	err = pxos_probe_info(dev);
	if (err)
		goto err_info;

	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = dev->name;
	dev->misc.fops = &pxos_fops;
	dev->misc.mode = 0666;
	err = misc_register(&dev->misc);
	if (err)
		goto err_misc;

	schedule_delayed_work(&dev->watch, msecs_to_jiffies(PXOS_WATCH_PERIOD_MS));
	dev_info(&vdev->dev, "/dev/%s: pxOS ABI %u.%u, vm %u, %s on %s, quota %llu bytes\n",
		 dev->name, le16_to_cpu(dev->info.abi_major), le16_to_cpu(dev->info.abi_minor),
		 le32_to_cpu(dev->info.vm_id), dev->info.backend, dev->info.device_name,
		 le64_to_cpu(dev->info.memory_quota));
	return 0;

err_misc:
err_info:
	virtio_reset_device(vdev);
	pxos_dev_drain(dev);
	vdev->config->del_vqs(vdev);
err_vqs:
err_index:
	vdev->priv = NULL;
	pxos_dev_put(dev); /* gives the index back */
err_alloc:
	return err;
}

static void pxos_remove(struct virtio_device *vdev)
{
	struct pxos_dev *dev = vdev->priv;

	/* No new opens; open files keep dev alive and get -ENODEV from now on. */
	misc_deregister(&dev->misc);
	cancel_delayed_work_sync(&dev->watch);
	virtio_reset_device(vdev);
	pxos_dev_drain(dev);
	vdev->config->del_vqs(vdev);
	vdev->priv = NULL;
	dev_info(&vdev->dev, "/dev/%s removed\n", dev->name);
	pxos_dev_put(dev);
}

static const struct virtio_device_id pxos_id_table[] = {
	{ VIRTIO_ID_GPU, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, pxos_id_table);

static struct virtio_driver pxos_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = pxos_id_table,
	.validate = pxos_validate,
	.probe = pxos_probe,
	.remove = pxos_remove,
};

static int __init pxos_init(void)
{
	return register_virtio_driver(&pxos_driver);
}

static void __exit pxos_exit(void)
{
	unregister_virtio_driver(&pxos_driver);
	ida_destroy(&pxos_index_ida);
}

module_init(pxos_init);
module_exit(pxos_exit);

MODULE_DESCRIPTION("pxOS GPU primitives over a virtio-gpu control queue");
MODULE_LICENSE("GPL");
