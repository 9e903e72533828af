"""Request paths of intercepted hosts: one normal form, and the patterns rules match it with.

Pure; patterns are compiled once at load. A path rule is only as strong as the agreement
between the proxy and the origin on what a path *means*, so `normalize_path` keeps only the
transformations RFC 3986 calls equivalences and refuses (PathAmbiguous) everything origins
disagree about, instead of guessing:

  normalized (RFC 3986 6.2.2, equivalent for every conforming origin)
    %41 %7e %2d %2e …  → A ~ - .     percent-escapes of unreserved characters are decoded (2.3)
    %3a → %3A                         other escapes keep their byte, hex in upper case (6.2.2.1)
    /a/./b /a/b/../c  → /a/b /a/c     dot segments removed (5.2.4), also when written %2e%2e
    "<>^`{|} raw      → %22 %3C …     printable characters a URI may not carry raw are escaped

  refused (PathAmbiguous)
    %2F  %5C  \\                      an encoded slash or a backslash: origins split on it or not
    //                                an empty segment: nginx merges slashes, others do not, and
                                      /a//../b is /a/b to one and /b to the other
    ;                                 path parameters: Tomcat/Jetty/Spring strip `;x` from each
                                      segment (so /a/..;/b is /b there), RFC 3986 does not
    /.. above the root                climbing out of the root is an attack, not a path
    %00-%1F %7F, raw controls, space, non-ASCII
    %25XX                             a double-encoded escape (%252e): a decoding origin's `..`
    % not followed by two hex digits
    anything not starting with "/"    absolute-form (https://host/p), authority-form, `*`:
                                      inside an intercepted tunnel only origin-form is judged

Path patterns (docs/interception.md, "Rules"): a pattern is itself a normalized path; `*`
matches any run of characters inside one segment (`/v1/*/status`, `/files/*.txt`), and a
pattern ending in `/*` matches everything below that directory, at any depth
(`/repos/our-org/*` matches /repos/our-org/x and /repos/our-org/x/y/z, not /repos/our-org and
not /repos/our-org-evil/x). Matching is case-sensitive, like paths (RFC 3986 6.2.2.1).
"""

from __future__ import annotations

import re
import string

_HEX = frozenset(string.hexdigits)
# RFC 3986 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~"
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@" (3.3), minus ";" (refused), plus "/".
_RAW_OK = frozenset(string.ascii_letters + string.digits + "-._~" + "!$&'()*+,=" + ":@" + "/")
# Printable ASCII a URI may not carry raw but clients send anyway (curl passes them through):
# escaped, which is what a conforming origin reads them as.
_RAW_ESCAPED = frozenset('"<>^`{|}')
# Escaped bytes that make a path mean different things to different origins.
_AMBIGUOUS_ESCAPES = {
    "2F": "an encoded slash (%2F)",
    "5C": "an encoded backslash (%5C)",
}
# The common case, already normal: non-empty segments of raw-safe characters, none of them
# `.` or `..` (an empty last segment, a trailing slash, is fine). Returned as is; a hypothesis
# test checks that the full normalization agrees (tests/unit/names/test_paths.py).
_PLAIN = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)*/?")
# Checked on the decoded text, so that %25%32%65 (which decodes to %252e) is caught too.
_DOUBLE_ESCAPE = re.compile(r"%25[0-9A-Fa-f]{2}")


class PathAmbiguous(ValueError):
    """The request target cannot be judged unambiguously; the message says why."""


def split_target(target: str) -> tuple[str, str]:
    """An origin-form target → (path, query with its "?", or ""). Raises PathAmbiguous."""
    if not target.startswith("/"):
        # The target itself is not quoted: this text goes to the access log.
        raise PathAmbiguous(
            "only origin-form targets (/path) are judged inside an intercepted tunnel "
            "(absolute-form, authority-form and * are refused)"
        )
    path, sep, query = target.partition("?")
    if "#" in path:
        raise PathAmbiguous("a fragment (#) in the request target")
    return path, sep + query


def normalize_request_path(target: str) -> str:
    """The normalized path of an origin-form target (the query is not part of it)."""
    return normalize_path(split_target(target)[0])


def normalize_path(path: str) -> str:
    """`path` in the normal form described in the module docstring, or PathAmbiguous."""
    if not path.startswith("/"):
        raise PathAmbiguous("a path starts with '/'")
    if _PLAIN.fullmatch(path) is not None:
        return path
    return _normalize_full(path)


def _normalize_full(path: str) -> str:
    """normalize_path without the fast path (the property tests compare the two)."""
    decoded = _decoded(path)
    if _DOUBLE_ESCAPE.search(decoded) is not None:
        raise PathAmbiguous("a double-encoded escape (%25 followed by two hex digits)")
    segments = decoded.split("/")[1:]
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "" and not last:
            raise PathAmbiguous("an empty path segment ('//')")
        if segment == ".":
            if last:
                out.append("")
            continue
        if segment == "..":
            if not out:
                raise PathAmbiguous("a '..' segment above the root")
            out.pop()
            if last:
                out.append("")
            continue
        out.append(segment)
    return "/" + "/".join(out)


def _decoded(path: str) -> str:
    """Escapes checked and normalized, unreserved ones decoded, raw characters checked."""
    parts: list[str] = []
    i = 0
    length = len(path)
    while i < length:
        char = path[i]
        if char == "%":
            parts.append(_escape(path, i))
            i += 3
        elif char in _RAW_OK:
            parts.append(char)
            i += 1
        elif char in _RAW_ESCAPED:
            parts.append(f"%{ord(char):02X}")
            i += 1
        else:
            raise PathAmbiguous(_raw_problem(char))
    return "".join(parts)


def _escape(path: str, i: int) -> str:
    hex_digits = path[i + 1 : i + 3]
    if len(hex_digits) != 2 or not set(hex_digits) <= _HEX:
        raise PathAmbiguous("a '%' not followed by two hex digits")
    code = hex_digits.upper()
    byte = int(code, 16)
    decoded = chr(byte)
    if decoded in _UNRESERVED:
        return decoded
    if byte < 0x20 or byte == 0x7F:
        raise PathAmbiguous(f"an encoded control character (%{code})")
    if code in _AMBIGUOUS_ESCAPES:
        raise PathAmbiguous(_AMBIGUOUS_ESCAPES[code])
    return "%" + code


def _raw_problem(char: str) -> str:
    if char == "\\":
        return "a backslash in the path"
    if char == ";":
        return "a ';' in the path (path parameters mean different things to different origins)"
    if char in "#?":
        return f"a {char!r} in the path"
    if not char.isascii():
        return "a non-ASCII character in the path (clients percent-encode it)"
    return f"a control character or space in the path (U+{ord(char):04X})"


class PathPattern:
    """One compiled path pattern of a rule (module docstring); `.matches(normalized_path)`."""

    __slots__ = ("regex", "text")

    def __init__(self, text: str, regex: re.Pattern[str]) -> None:
        self.text = text
        self.regex = regex

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Parse one pattern; ValueError with an operator-facing reason."""
        if not text.startswith("/"):
            raise ValueError(f"{text!r}: a path pattern starts with '/'")
        if "?" in text:
            raise ValueError(f"{text!r}: path patterns match the path only, not the query (?)")
        if "**" in text:
            raise ValueError(
                f"{text!r}: '**' is not a pattern; a pattern ending in '/*' matches everything "
                "below that directory, at any depth"
            )
        try:
            normal = normalize_path(text)
        except PathAmbiguous as exc:
            raise ValueError(f"{text!r}: {exc}; a path pattern must be a plain path") from None
        if normal != text:
            raise ValueError(
                f"{text!r}: write the pattern in normal form ({normal!r}): requests are "
                "matched after normalization, so this spelling could never match"
            )
        return cls(text, re.compile(_regex(text)))

    def matches(self, path: str) -> bool:
        """Whether the NORMALIZED path `path` matches this pattern."""
        return self.regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        return f"PathPattern({self.text!r})"


def _regex(text: str) -> str:
    deep = text.endswith("/*")
    body = text[:-2] if deep else text
    pieces = [re.escape(piece) for piece in body.split("*")]
    regex = "[^/]*".join(pieces)
    return regex + "/.*" if deep else regex


def compile_paths(patterns: tuple[PathPattern, ...]) -> re.Pattern[str] | None:
    """One regex matching a path if any of `patterns` does; None for "any path" (no patterns)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.regex.pattern})" for p in patterns))
