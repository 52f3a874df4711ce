"""python -m qemu: the pxos-vm command."""

import sys

from .launcher import main

sys.exit(main())
