"""Test support shared by the suite and the benchmarks: the scripted vhost-user
front-end (plays QEMU), its Python split-ring driver, a reference chain walker, and a
test-only echo device for the vhost-user library."""
