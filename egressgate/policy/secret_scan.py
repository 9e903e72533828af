"""Finding and redacting literal secrets in streamed bytes. Pure: no I/O.

Interception lets the proxy add a credential (`set_headers`) that the application never holds.
Two rules keep it from leaking (docs/interception.md):

- a request that carries another host's secret on a leg the proxy can read is refused
  (`secret-leak`): `SecretFinder.search` for heads, `LeakScan` for streamed bodies;
- a response that echoes a secret has it replaced before it reaches the client: `Redactor`.

Bodies arrive in chunks, and a secret may be split across two of them. Both stream scanners
therefore hold back the last `longest - 1` bytes of what they have seen until the next chunk
(or the end) shows whether those bytes start a secret: no prefix of a secret is released
before the scanner knows it is not one. Redaction replaces each byte of a secret with `*`, so
the length of the body does not change (Content-Length and chunk sizes stay true).

Limits (documented in docs/interception.md): only literal byte matches are found. A body that
is compressed (gzip, br), encoded (base64, URL-encoding, JSON \\u escapes) or split across
HTTP messages is not recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK_BYTE = b"*"


class SecretFinder:
    """One compiled search over a set of secrets (longest first, so overlaps mask fully)."""

    __slots__ = ("_pattern", "holdback")

    def __init__(self, secrets: Iterable[bytes]) -> None:
        unique = sorted({s for s in secrets if s}, key=len, reverse=True)
        if not unique:
            raise ValueError("SecretFinder needs at least one non-empty secret")
        self._pattern = re.compile(b"|".join(re.escape(s) for s in unique))
        self.holdback = len(unique[0]) - 1  # bytes that may still start a split secret

    def search(self, data: bytes) -> bool:
        return self._pattern.search(data) is not None

    def mask(self, data: bytes) -> tuple[bytes, int]:
        """`data` with every secret masked, and the number of secrets found."""
        count = 0

        def masked(match: re.Match[bytes]) -> bytes:
            nonlocal count
            count += 1
            return MASK_BYTE * (match.end() - match.start())

        return self._pattern.sub(masked, data), count


class _HeldBack:
    """What both stream scanners share: the tail that may still start a secret is held back
    until the next chunk (or `flush` at the end of the message)."""

    __slots__ = ("_finder", "_held")

    def __init__(self, finder: SecretFinder) -> None:
        self._finder = finder
        self._held = b""

    def _joined(self, chunk: bytes) -> bytes:
        return self._held + chunk if self._held else chunk

    def _release(self, data: bytes) -> bytes:
        keep = self._finder.holdback
        if keep == 0:
            return data
        self._held = data[-keep:]
        return data[:-keep]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


class LeakScan(_HeldBack):
    """A request body on its way out: `feed` returns the bytes safe to send now, or None once a
    secret was seen (the caller refuses and sends nothing more); `flush` the rest at the end."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> bytes | None:
        data = self._joined(chunk)
        if self._finder.search(data):
            self._held = b""
            return None
        return self._release(data)


class Redactor(_HeldBack):
    """A response body on its way to the client: `feed` returns the bytes to relay now (secrets
    masked), `flush` the rest at the end. `found` counts the secrets masked."""

    __slots__ = ("found",)

    def __init__(self, finder: SecretFinder) -> None:
        super().__init__(finder)
        self.found = 0

    def feed(self, chunk: bytes) -> bytes:
        data, count = self._finder.mask(self._joined(chunk))
        self.found += count
        # Masked bytes are `*`, never the start of a secret: holding back the tail is enough.
        return self._release(data)
