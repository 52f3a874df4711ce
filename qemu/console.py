"""The guest's serial console as text: escape codes stripped (SeaBIOS and the kernel
write ANSI/VT100 sequences), lines split, and the markers of the initramfs /init
(qemu/initramfs.py) recognised."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from . import initramfs

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL/ST), two-byte escapes (ESC c, ESC 7,
# ESC ( B, ...), then the C0 controls other than tab and newline.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[()*+][0-~]"
    r"|\x1b[@-Z\\-_`-~]"
    r"|[\x00-\x08\x0b-\x1f\x7f]"
)

#: A console line longer than this is cut: a guest cannot grow the host's memory without
#: bound through one endless line.
MAX_LINE = 4096
#: Lines kept per run; older ones are dropped (the log file keeps everything).
MAX_LINES = 20000


def clean(text: str) -> str:
    """The text with terminal escape sequences and control characters removed."""
    return _ESCAPES.sub("", text.replace("\r\n", "\n")).replace("\r", "")


@dataclass
class Console:
    """Collects console output, line by line, and wakes waiters on each line."""

    lines: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    _partial: str = ""
    _cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def feed(self, data: bytes) -> None:
        text = self._partial + data.decode("utf-8", "replace")
        *complete, self._partial = text.split("\n")
        if len(self._partial) > MAX_LINE:
            complete.append(self._partial)
            self._partial = ""
        now = time.monotonic()
        with self._cond:
            for raw in complete:
                self.lines.append(clean(raw)[:MAX_LINE])
                self.stamps.append(now)
            if len(self.lines) > MAX_LINES:
                del self.lines[:-MAX_LINES], self.stamps[:-MAX_LINES]
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._partial:
                self.lines.append(clean(self._partial)[:MAX_LINE])
                self.stamps.append(time.monotonic())
                self._partial = ""
            self.closed = True
            self._cond.notify_all()

    def find(self, pattern: str | re.Pattern[str], start: int = 0) -> tuple[int, re.Match[str]] | None:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._cond:
            for i in range(start, len(self.lines)):
                if m := rx.search(self.lines[i]):
                    return i, m
        return None

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> tuple[int, re.Match[str]] | None:
        """The first line matching pattern, waiting up to timeout; None on timeout or EOF."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        start = 0
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if m := rx.search(self.lines[i]):
                        return i, m
                start = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self._cond.wait(left)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tail(self, chars: int) -> str:
        """The last ``chars`` characters, the line being written included (live views)."""
        with self._cond:
            out, n = [clean(self._partial)], len(self._partial)
            for line in reversed(self.lines):
                if n >= chars:
                    break
                out.append(line)
                n += len(line) + 1
        return "\n".join(reversed(out))[-chars:]

    def exit_status(self) -> int | None:
        """The status /init printed after the guest command, if it got that far."""
        found = self.find(rf"^{initramfs.MARK_EXIT} (-?\d+)\s*$")
        return int(found[1].group(1)) if found else None
