"""Property tests of the C chain walker: random descriptor tables never crash it, never
yield a segment outside guest memory, and it agrees with the pure-Python reference walker
(same segments for valid chains, same errno for invalid ones)."""

from __future__ import annotations

import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.core_harness import LAYOUT, CoreHarness
from tests.support.ref_walker import WalkError, walk
from virtio_backend.core import ffi, lib

TABLE = 0x60000  # where the random indirect table lives (region 2)
# Addresses around every region edge, inside regions, in gaps, and absurd ones.
EDGES = sorted({e for g, s, _ in LAYOUT for e in (g, g + s - 16, g + s - 1, g + s, g + s + 8)})
addrs = st.one_of(st.sampled_from(EDGES), st.integers(0, 0x90000), st.just(TABLE),
                  st.integers(0, 2**64 - 1), st.just(2**64 - 8))
lengths = st.one_of(st.integers(0, 64), st.integers(0, 0x50000), st.sampled_from([16, 32, 128, 2**32 - 1]))
flags = st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF))


def descs(n):
    return st.lists(st.tuples(addrs, lengths, flags, st.integers(0, n + 2)), min_size=n, max_size=n)


@st.composite
def scenario(draw):
    num = draw(st.sampled_from([1, 2, 4, 8, 16]))
    table = draw(descs(num))
    ind_n = draw(st.integers(1, 8))
    ind = draw(descs(ind_n))
    # Bias some heads toward a well-formed indirect descriptor.
    if draw(st.booleans()):
        table[0] = (TABLE, 16 * ind_n, 4, 0)
    return num, table, ind, draw(st.integers(0, num)), draw(st.booleans())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_c_walker_is_safe_and_agrees_with_the_reference(sc):
    num, table, ind, head, indirect_ok = sc
    h = CoreHarness(num=num, indirect=indirect_ok)
    try:
        for i, d in enumerate(table):
            h.desc(i, *d)
        for i, d in enumerate(ind):
            h.desc(i, *d, table=TABLE)
        rc, segs, out = h.walk(head)
        try:
            ref, rlen, wlen = walk(h.ram, h.desc_gpa, num, head, indirect_ok=indirect_ok)
        except WalkError as exc:
            assert rc == -exc.code, (errno.errorcode.get(-rc, rc), exc)
            return
        assert rc == len(ref)
        assert segs == ref
        assert (out.readable_len, out.writable_len) == (rlen, wlen)
        for gpa, length, _ in segs:
            assert any(g <= gpa and gpa + length <= g + s for g, s, _ in LAYOUT)
    finally:
        h.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40), st.integers(0, 0xFFFF),
       st.lists(descs(8), min_size=1, max_size=1))
def test_pop_on_random_avail_rings_never_escapes_guest_memory(heads, avail_idx, table):
    h = CoreHarness(num=8)
    try:
        for i, d in enumerate(table[0]):
            h.desc(i, *d)
        for hd in heads[:8]:
            h.publish(hd % 12)  # mostly valid heads, some beyond the ring
        if len(heads) > 8:
            h.avail_idx = avail_idx
            h.publish()
        chains = ffi.new("struct pxq_chain[]", 16)
        segs = ffi.new("struct pxq_seg[]", 4096)
        for _ in range(3):
            n = lib.pxq_pop(h.vr, h.mem, chains, 16, segs, 4096)
            if n <= 0:
                break
            for c in range(n):
                ch = chains[c]
                assert ch.head < 8
                for k in range(ch.first_seg, ch.first_seg + ch.nsegs):
                    gpa = h.to_gpa(segs[k].host)
                    assert any(g <= gpa and gpa + segs[k].len <= g + s for g, s, _ in LAYOUT)
        assert h.vr.inflight_count <= 8
    finally:
        h.close()
