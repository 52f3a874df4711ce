"""Console text: SeaBIOS/kernel escape codes stripped, lines split across reads, markers."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from qemu.console import MAX_LINE, Console, clean

SEABIOS = (b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.3-debian-1.16.3-2)\r\n"
           b"\x1b[2J\x1b[1;1HBooting from ROM..\r\n\x1b(B\x1b)0\x1b[?25hPXOS-INIT 6.1.0-56-amd64\r\n")


def test_seabios_escapes_are_removed():
    c = Console()
    c.feed(SEABIOS)
    assert c.lines == ["SeaBIOS (version 1.16.3-debian-1.16.3-2)", "Booting from ROM..",
                       "PXOS-INIT 6.1.0-56-amd64"]


def test_lines_split_across_reads_and_exit_status():
    c = Console()
    for piece in (b"check  1/14 info ok\r", b"\nselftest: 14/", b"14 passed\r\n\r\nPXOS-EX", b"IT 3\r\n"):
        c.feed(piece)
    assert c.lines == ["check  1/14 info ok", "selftest: 14/14 passed", "", "PXOS-EXIT 3"]
    assert c.exit_status() == 3


def test_exit_marker_must_be_a_whole_line():
    c = Console()
    c.feed(b"echo PXOS-EXIT 0 was typed\nPXOS-EXIT 0 trailing\n")
    assert c.exit_status() is None


def test_endless_line_is_cut():
    c = Console()
    c.feed(b"x" * (MAX_LINE * 3))
    c.close()
    assert all(len(line) <= MAX_LINE for line in c.lines)


def test_wait_for_wakes_on_a_later_line():
    c = Console()
    t = threading.Timer(0.05, c.feed, args=(b"PXOS-READY\n",))
    t.start()
    found = c.wait_for(r"^PXOS-READY$", timeout=5)
    t.join()
    assert found is not None and found[0] == 0


def test_wait_for_returns_none_at_eof():
    c = Console()
    c.close()
    assert c.wait_for("never", timeout=5) is None


@given(st.binary(max_size=2048))
def test_any_bytes_give_text_without_controls(data):
    c = Console()
    c.feed(data)
    c.close()
    for line in c.lines:
        assert "\x1b" not in line and "\r" not in line
        assert all(ch == "\t" or ord(ch) >= 0x20 for ch in line if ord(ch) < 0x80)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=200))
def test_printable_text_passes_unchanged(text):
    assert clean(text) == text
