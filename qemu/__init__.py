"""pxos-vm: guest artefacts (kernel, module, tool, initramfs) and QEMU command lines for
guests that reach pxos-hvd through a vhost-user-gpu-pci device."""
