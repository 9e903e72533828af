"""names/paths.py: the normal form of request paths and the path patterns of intercept rules.

Tables for each transformation and each refusal (the hidden-path tricks of issue 16), then
properties: the normal form is a fixed point, never climbs above the root, never holds a dot
segment, an empty segment or an ambiguous escape; the fast path agrees with the full one; and
the one that matters: no path accepted under `/repos/our-org/*` means something outside
`/repos/our-org/` to any of the ways origins are known to read paths (RFC 3986, decode-all,
nginx merge_slashes, Tomcat path parameters, backslash-as-slash, double decoding).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.names.paths import (
    PathAmbiguous,
    PathPattern,
    _normalize_full,
    compile_paths,
    normalize_path,
    normalize_request_path,
    split_target,
)

NORMALIZED = [
    ("/", "/"),
    ("/repos/our-org/x", "/repos/our-org/x"),
    ("/repos/our-org/", "/repos/our-org/"),
    # RFC 3986 5.2.4: dot segments
    ("/repos/our-org/../other-org", "/repos/other-org"),
    ("/repos/our-org/./x", "/repos/our-org/x"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/../", "/"),
    ("/a/b/../../c", "/c"),
    # 2.3 / 6.2.2.2: escapes of unreserved characters decoded, in either case
    ("/repos/our-org/%2e%2e/other-org", "/repos/other-org"),
    ("/repos/our-org/%2E%2E/other-org", "/repos/other-org"),
    ("/repos/our-org/.%2e/other-org", "/repos/other-org"),
    ("/a/%2e/b", "/a/b"),
    ("/%72epos/%6Fur-org", "/repos/our-org"),
    ("/a/%7e%7E%2D%5f", "/a/~~-_"),
    # 6.2.2.1: other escapes kept, hex in upper case
    ("/a/%3a%3A", "/a/%3A%3A"),
    ("/a/%c3%a9", "/a/%C3%A9"),
    ("/a/%20b", "/a/%20b"),
    ("/a/%25", "/a/%25"),  # a lone encoded percent is data
    # raw characters a URI may not carry, escaped as a conforming origin reads them
    ("/a/{x}|y", "/a/%7Bx%7D%7Cy"),
    ("/a/.b/..c/...", "/a/.b/..c/..."),  # not dot segments
    ("/a:b@c/!$&'()*+,=", "/a:b@c/!$&'()*+,="),
]


@pytest.mark.parametrize(("path", "expected"), NORMALIZED)
def test_normalized(path: str, expected: str) -> None:
    assert normalize_path(path) == expected
    assert _normalize_full(path) == expected


AMBIGUOUS = [
    ("", "starts with '/'"),
    ("repos", "starts with '/'"),
    ("/repos//other-org", "empty path segment"),
    ("//repos/our-org", "empty path segment"),
    ("/repos/our-org//../other-org", "empty path segment"),
    ("/..", "above the root"),
    ("/a/../..", "above the root"),
    ("/%2e%2e/x", "above the root"),
    ("/a;x/../b", "';'"),
    ("/repos/our-org/..;/other-org", "';'"),
    ("/a/b;jsessionid=1", "';'"),
    ("/repos/our-org%2F..%2Fother-org", "encoded slash"),
    ("/a%2fb", "encoded slash"),
    ("/a%5Cb", "encoded backslash"),
    ("/a\\..\\b", "backslash"),
    ("/a%00b", "control character"),
    ("/a%0d%0a", "control character"),
    ("/a%7f", "control character"),
    ("/a\x00b", "control character"),
    ("/a b", "control character or space"),
    ("/a\tb", "control character"),
    ("/caf\u00e9", "non-ASCII"),
    ("/a%", "two hex digits"),
    ("/a%2", "two hex digits"),
    ("/a%zz", "two hex digits"),
    ("/a%%41", "two hex digits"),
    ("/a/%252e%252e/b", "double-encoded"),
    ("/a/%25%32%65", "double-encoded"),  # decodes to %252e
    ("/a#frag", "'#'"),
]


@pytest.mark.parametrize(("path", "why"), AMBIGUOUS)
def test_ambiguous(path: str, why: str) -> None:
    with pytest.raises(PathAmbiguous, match=re.escape(why)):
        normalize_path(path)


TARGETS = [
    ("/a/b?x=1", ("/a/b", "?x=1")),
    ("/a/b?", ("/a/b", "?")),
    ("/a/b?x=/../..;%2F", ("/a/b", "?x=/../..;%2F")),  # the query is not judged, not touched
    ("/", ("/", "")),
]


@pytest.mark.parametrize(("target", "parts"), TARGETS)
def test_split_target(target: str, parts: tuple[str, str]) -> None:
    assert split_target(target) == parts


@pytest.mark.parametrize(
    "target",
    [
        "https://api.github.com/repos/other-org",  # absolute-form inside the tunnel
        "http://api.github.com/repos/our-org/x",
        "api.github.com:443",  # authority-form
        "*",  # asterisk-form
        "",
        "/a#f?x",
    ],
)
def test_only_origin_form_targets(target: str) -> None:
    with pytest.raises(PathAmbiguous):
        normalize_request_path(target)


def test_request_path_drops_the_query() -> None:
    assert normalize_request_path("/repos/our-org/%2e%2e/x?y=1") == "/repos/x"


# ---------------------------------------------------------------------------------------------
# Path patterns
# ---------------------------------------------------------------------------------------------

PATTERN_CASES = [
    # pattern, path, matches
    ("/repos/our-org/*", "/repos/our-org/x", True),
    ("/repos/our-org/*", "/repos/our-org/x/y/z", True),
    ("/repos/our-org/*", "/repos/our-org/", True),
    ("/repos/our-org/*", "/repos/our-org", False),
    ("/repos/our-org/*", "/repos/our-org-evil/x", False),
    ("/repos/our-org/*", "/repos/other-org/x", False),
    ("/repos/our-org/*", "/REPOS/our-org/x", False),  # case-sensitive
    ("/repos/our-org", "/repos/our-org", True),
    ("/repos/our-org", "/repos/our-org/", False),
    ("/repos/our-org", "/repos/our-org/x", False),
    ("/v1/*/status", "/v1/abc/status", True),
    ("/v1/*/status", "/v1/a/b/status", False),  # inner * stays in one segment
    # (/v1//status never gets here: an empty segment is refused before matching)
    ("/v1/*/status", "/v1/abc/status/x", False),
    ("/files/*.txt", "/files/a.txt", True),
    ("/files/*.txt", "/files/a.txt.bin", False),
    ("/files/*.txt", "/files/a/b.txt", False),
    ("/files/a*", "/files/abc", True),
    ("/files/a*", "/files/abc/d", False),  # only a whole trailing /* is deep
    ("/*", "/", True),
    ("/*", "/anything/at/all", True),
    ("/", "/", True),
    ("/", "/a", False),
    ("/a.b/c", "/aXb/c", False),  # . is literal, not a regex
    ("/a/%3A", "/a/%3A", True),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), PATTERN_CASES)
def test_pattern_matching(pattern: str, path: str, matches: bool) -> None:
    assert PathPattern.parse(pattern).matches(path) is matches
    combined = compile_paths((PathPattern.parse(pattern), PathPattern.parse("/never")))
    assert combined is not None
    assert (combined.fullmatch(path) is not None) is matches


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("repos/*", "starts with '/'"),
        ("/repos/**", "'**'"),
        ("/repos?x=1", "not the query"),
        ("/a/../b", "normal form ('/b')"),
        ("/a/./b", "normal form ('/a/b')"),
        ("/a/%7e", "normal form ('/a/~')"),
        ("/a//b", "empty path segment"),
        ("/a;x", "';'"),
        ("/a%2Fb", "encoded slash"),
        ("/a\\b", "backslash"),
    ],
)
def test_bad_patterns(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        PathPattern.parse(pattern)


def test_no_patterns_means_any_path() -> None:
    assert compile_paths(()) is None


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

TOKENS = [
    "a",
    "our-org",
    "other-org",
    "x.y",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e.",
    "...",
    ";",
    ";x",
    "..;",
    "%3B",
    "%3b",
    "/",
    "//",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    "%25",
    "%252e",
    "%25%32%65",
    "%41",
    "%7e",
    "~",
    "%00",
    "%",
    "%zz",
    "*",
    "%C3%A9",
    "{",
    " ",
]
paths = st.lists(st.sampled_from(TOKENS), max_size=12).map(lambda ts: "/" + "".join(ts))
any_text = st.text(alphabet=st.characters(codec="ascii"), max_size=40).map(lambda t: "/" + t)
both = st.one_of(paths, any_text, paths.map(lambda p: "/repos/our-org" + p))


def _normal_or_none(path: str) -> str | None:
    try:
        return normalize_path(path)
    except PathAmbiguous:
        return None


@given(both)
def test_normal_form_is_a_fixed_point(path: str) -> None:
    normal = _normal_or_none(path)
    if normal is not None:
        assert normalize_path(normal) == normal


@given(both)
def test_fast_path_agrees_with_the_full_normalization(path: str) -> None:
    try:
        expected: str | type[PathAmbiguous] = _normalize_full(path)
    except PathAmbiguous:
        expected = PathAmbiguous
    try:
        got: str | type[PathAmbiguous] = normalize_path(path)
    except PathAmbiguous:
        got = PathAmbiguous
    assert got == expected


@given(both)
def test_normal_form_has_no_dot_or_empty_segment_or_ambiguous_escape(path: str) -> None:
    normal = _normal_or_none(path)
    if normal is None:
        return
    assert normal.startswith("/")
    segments = normal.split("/")[1:]
    assert all(s not in (".", "..") for s in segments)
    assert all(segments[:-1]), "only the last segment may be empty"
    assert "\\" not in normal
    assert ";" not in normal
    upper_escapes = re.findall(r"%(..)", normal)
    assert all(e == e.upper() and e not in ("2F", "5C", "00") for e in upper_escapes)
    assert not re.search(r"%25[0-9A-Fa-f]{2}", normal)
    assert all(unquote(f"%{e}") not in "-._~" or not e.isalnum() for e in upper_escapes)


def _remove_dots(path: str) -> str:
    """RFC 3986 5.2.4 as origins do it: `..` at the root stays at the root."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and out:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(segment)
    return "/" + "/".join(out)


def _origin_views(raw: str) -> list[str]:
    """How various origins read `raw` (what they would route on)."""
    decoded = unquote(raw)
    return [
        _remove_dots(decoded),  # decode everything, then dot segments
        _remove_dots(re.sub("/+", "/", decoded)),  # nginx merge_slashes
        _remove_dots(unquote(re.sub(r";[^/]*", "", raw))),  # Tomcat: strip ;params first
        _remove_dots(decoded.replace("\\", "/")),  # WHATWG / IIS: backslash is a slash
        _remove_dots(unquote(decoded)),  # a double-decoding origin
        _remove_dots(raw),  # RFC 3986 on the raw text
    ]


RULE = PathPattern.parse("/repos/our-org/*")


@given(paths.map(lambda p: "/repos/our-org" + p))
def test_no_accepted_path_escapes_its_rule_for_any_origin(path: str) -> None:
    normal = _normal_or_none(path)
    if normal is None or not RULE.matches(normal):
        return
    for view in _origin_views(path):
        assert view.startswith("/repos/our-org/"), (path, normal, view)


@given(paths)
def test_never_above_the_root_and_refusal_is_consistent(path: str) -> None:
    """A normalized path is the RFC reading of the client's path; ambiguity is never guessed."""
    normal = _normal_or_none(path)
    if normal is not None:
        assert _remove_dots(unquote(normal)) == unquote(normal)
        assert _remove_dots(unquote(path)) == unquote(normal)
