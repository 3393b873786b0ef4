"""The console's own line editing: bytes from the terminal in, echo and events out.

Pure (no I/O), so every key sequence is easy to test. The terminal is in raw mode and
does not echo, so the console echoes what it accepts:

- printable characters (UTF-8) are echoed; control bytes and invalid UTF-8 are dropped;
- backspace (0x08) and DEL (0x7f) erase one character (``"\\b \\b"``);
- Ctrl-U erases the line, Ctrl-W the last word, Ctrl-C cancels the line (``^C``);
- CR, LF and CR LF each end a line once (the LF of a CR LF is ignored);
- escape sequences (arrow and function keys) are swallowed whole;
- past ``max_length`` characters, a key rings the bell instead of being taken.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 256
CRLF = b"\r\n"
ERASE = b"\b \b"
BELL = b"\x07"
_BACKSPACE, _DELETE = 0x08, 0x7F
_CTRL_C, _CTRL_U, _CTRL_W = 0x03, 0x15, 0x17
_CR, _LF, _ESC = 0x0D, 0x0A, 0x1B


@dataclass(frozen=True)
class Echo:
    """Bytes to send back to the terminal."""

    data: bytes


@dataclass(frozen=True)
class Submit:
    """A finished line (its echo, CR LF, has already been emitted)."""

    line: str


@dataclass(frozen=True)
class Cancel:
    """Ctrl-C: the line was dropped (``^C`` and CR LF already echoed)."""


Event = Echo | Submit | Cancel


class LineEditor:
    """Turns raw terminal bytes into echo and finished lines."""

    def __init__(self, *, max_length: int = MAX_LINE) -> None:
        self.max_length = max_length
        self._chars: list[str] = []
        self._pending = b""  # an incomplete UTF-8 sequence
        self._after_cr = False
        self._escape = b""  # an escape sequence being swallowed

    @property
    def line(self) -> str:
        """The line typed so far."""
        return "".join(self._chars)

    def reset(self) -> None:
        """Forget the line and any half-read sequence (a new connection)."""
        self._chars.clear()
        self._pending = b""
        self._after_cr = False
        self._escape = b""

    def feed(self, data: bytes) -> list[Event]:
        """Process bytes; return the echo and events they cause, in order."""
        events: list[Event] = []
        for byte in data:
            events.extend(self._byte(byte))
        return _merge_echo(events)

    def _byte(self, byte: int) -> list[Event]:
        after_cr, self._after_cr = self._after_cr, False
        if self._escape:
            self._swallow(byte)
            return []
        if byte in (_CR, _LF):
            if byte == _LF and after_cr:
                return []
            self._after_cr = byte == _CR
            return self._finish()
        if byte == _ESC:
            self._pending = b""
            self._escape = b"\x1b"
            return []
        if byte < 0x20 or byte == _DELETE:
            return self._control(byte)
        return self._text(byte)

    def _swallow(self, byte: int) -> None:
        """Consume ESC [ ... final, ESC O x, or ESC x."""
        self._escape += bytes([byte])
        introducer = self._escape[1:2]
        if len(self._escape) == 2 and introducer in (b"[", b"O"):
            return
        if introducer == b"[" and not 0x40 <= byte <= 0x7E and len(self._escape) < 16:
            return
        self._escape = b""

    def _finish(self) -> list[Event]:
        line = self.line
        self.reset_line()
        return [Echo(CRLF), Submit(line)]

    def reset_line(self) -> None:
        """Drop the characters typed so far (no echo)."""
        self._chars.clear()
        self._pending = b""

    def _control(self, byte: int) -> list[Event]:
        if byte in (_BACKSPACE, _DELETE):
            return self._erase(1)
        if byte == _CTRL_U:
            return self._erase(len(self._chars))
        if byte == _CTRL_W:
            return self._erase(self._word_length())
        if byte == _CTRL_C:
            self.reset_line()
            return [Echo(b"^C" + CRLF), Cancel()]
        return []

    def _erase(self, count: int) -> list[Event]:
        self._pending = b""
        count = min(count, len(self._chars))
        if count == 0:
            return []
        del self._chars[len(self._chars) - count :]
        return [Echo(ERASE * count)]

    def _word_length(self) -> int:
        text = self.line
        kept = text.rstrip(" ")
        kept = kept[: kept.rfind(" ") + 1]
        return len(text) - len(kept)

    def _text(self, byte: int) -> list[Event]:
        self._pending += bytes([byte])
        try:
            char = self._pending.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data" and len(self._pending) < 4:
                return []
            retry = len(self._pending) > 1
            self._pending = b""
            return self._text(byte) if retry else []
        encoded, self._pending = self._pending, b""
        if not char.isprintable():
            return []
        if len(self._chars) >= self.max_length:
            return [Echo(BELL)]
        self._chars.append(char)
        return [Echo(encoded)]


def _merge_echo(events: list[Event]) -> list[Event]:
    """Join neighbouring echoes so one write carries them."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Echo) and merged and isinstance(merged[-1], Echo):
            merged[-1] = Echo(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged
