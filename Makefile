# pxOS — developer entry points. `scripts/setup.sh` installs what is missing (Debian
# packages, QEMU 10 from bookworm-backports, the venv); every target below runs in .venv.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.pxos-installed
PYTEST_ARGS ?=

.PHONY: setup demo demo-serve demo-matmul demo-host test test-fast lint bench proto clean

$(STAMP): pyproject.toml setup.py virtio_backend/core/pxq_core.c virtio_backend/core/pxq_core.h
	./scripts/setup.sh

setup: $(STAMP)

## The main job: pxos-hvd with SmolLM2-135M loaded once and three QEMU guests (shares
## 50/30/20) generating text from it through /dev/pxos0; tokens/s per VM follow the shares.
## The first run fetches Debian's guest kernel (apt-get download) and builds the module.
demo: $(STAMP)
	$(PY) -m qemu demo --workload llm --duration 60

## The same three VMs serving OpenAI-compatible completions over a pxOS-made network (root:
## a network namespace, a bridge, taps), driven by bench/serve_load.py inside it; watch
## `pxosctl top` beside it (the command is printed).
demo-serve: $(STAMP)
	$(PY) -m qemu demo --serve --duration 60

## The synthetic demo: the same three guests keeping matmuls in flight with `pxos load`.
demo-matmul: $(STAMP)
	$(PY) -m qemu demo --workload matmul --duration 20

## The host-side demo: the same three VMs driven in-process, no QEMU.
demo-host: $(STAMP)
	$(PY) -m hypervisor.daemon demo --duration 10

## Every test: lint, then the whole suite (gpu tests skip with their reason where there is no GPU).
test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

## Everything but the tests that boot QEMU or take long.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not qemu and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

## Every benchmark (the GPU figures need a GPU: `--backend cupy` where there is one).
bench: $(STAMP)
	$(PY) -m bench.run_all

## Regenerate the gRPC code from hypervisor/rpc/pxos.proto.
proto: $(STAMP)
	$(PY) -m hypervisor.rpc.regen

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
