"""Draw docs/decision-order.svg: the order in which egressgate judges a request, and the reason
code each step can answer with.

    python3 scripts/render_decision_diagram.py           # rewrite docs/decision-order.svg
    python3 scripts/render_decision_diagram.py --check   # exit 1 if the file is out of date

The codes and their statuses come from `egressgate.errors.Reason`, so the picture cannot drift
from the code: STEPS names Reason members, not strings, and tests/unit/test_decision_diagram.py
checks that every reason a code path emits is placed on a step and that the committed SVG is
what this script writes. Plain SVG, no dependencies: the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from egressgate.errors import Reason  # noqa: E402

TARGET = ROOT / "docs" / "decision-order.svg"


@dataclass(frozen=True)
class Step:
    title: str
    what: str
    reasons: tuple[Reason, ...]
    note: str = ""


STEPS = (
    Step(
        "client",
        "connection accepted, request head (or SOCKS5 handshake) read and checked",
        (
            Reason.TOO_MANY_CONNECTIONS,
            Reason.SHUTTING_DOWN,
            Reason.TLS_HANDSHAKE_FAILED,
            Reason.HEADER_TIMEOUT,
            Reason.URI_TOO_LONG,
            Reason.HEADERS_TOO_LARGE,
            Reason.BAD_REQUEST,
            Reason.NOT_A_PROXY_REQUEST,
            Reason.UNSUPPORTED_SCHEME,
            Reason.SMUGGLING,
            Reason.SOCKS_VERSION_UNSUPPORTED,
            Reason.SOCKS_COMMAND_UNSUPPORTED,
            Reason.SOCKS_ADDRESS_TYPE_UNSUPPORTED,
        ),
    ),
    Step(
        "policy",
        "clients rules: source, proxy user, TLS client name",
        (Reason.AUTH_REQUIRED,),
    ),
    Step(
        "name",
        "allowlist: exact, .domain, *.sub, *; IP literals only if listed",
        (Reason.HOST_NOT_ALLOWED, Reason.IP_LITERAL_NOT_ALLOWED),
        "report mode: logged, let through",
    ),
    Step(
        "port",
        "connect_ports (CONNECT), http_ports (plain HTTP)",
        (Reason.PORT_NOT_ALLOWED,),
        "report mode: logged, let through",
    ),
    Step(
        "DNS",
        "hosts_file, then nameservers; every A/AAAA answer",
        (Reason.DNS_NXDOMAIN, Reason.DNS_NO_ADDRESS, Reason.DNS_FAILURE, Reason.DNS_TIMEOUT),
    ),
    Step(
        "address vetting",
        "every address: internal, metadata, reserved? allow_private",
        (Reason.PRIVATE_ADDRESS,),
        "in every mode",
    ),
    Step(
        "connect",
        "only vetted addresses, in order, no second lookup; then the exchange",
        (
            Reason.UPSTREAM_REFUSED,
            Reason.UPSTREAM_UNREACHABLE,
            Reason.UPSTREAM_TIMEOUT,
            Reason.UPSTREAM_RESET,
            Reason.UPSTREAM_BAD_RESPONSE,
            Reason.UPSTREAM_ERROR,
        ),
    ),
    Step(
        "SNI",
        "CONNECT, after 200: TLS server name = CONNECT host, allowed",
        (
            Reason.SNI_NOT_ALLOWED,
            Reason.SNI_MISMATCH,
            Reason.SNI_MISSING,
            Reason.SNI_UNREADABLE,
        ),
        "TLS alert; logged as 403",
    ),
)

# Layout, in SVG user units (px).
WIDTH = 980
MARGIN = 16
STEP_W = 370
ROW_H = 64
GAP = 18
CODES_X = MARGIN + STEP_W + 40
CODES_W = WIDTH - CODES_X - MARGIN
CODE_LINE_H = 15
CODE_CHAR_W = 6.7  # DejaVu Sans Mono at 11 px
TOP = MARGIN + 46  # below the title and the legend
SANS = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"


def _code_lines(reasons: tuple[Reason, ...]) -> list[str]:
    """`403 host-not-allowed · 403 ...`, wrapped to the width of the codes box."""
    limit = int((CODES_W - 20) / CODE_CHAR_W)
    lines: list[str] = []
    for label in (f"{r.status} {r.value}" for r in reasons):
        if lines and len(lines[-1]) + 3 + len(label) <= limit:
            lines[-1] += " · " + label
        else:
            lines.append(label)
    return lines


def _text(x: int, y: int, text: str, *, size: int, font: str = SANS, extra: str = "") -> str:
    attrs = f'x="{x}" y="{y}" font-family="{font}" font-size="{size}"{extra}'
    return f"  <text {attrs}>{escape(text)}</text>"


def _step(step: Step, number: int, top: int) -> list[str]:
    out = [
        f'  <rect x="{MARGIN}" y="{top}" width="{STEP_W}" height="{ROW_H}" rx="8" '
        'fill="#e8f0fe" stroke="#3b6fd8"/>',
        _text(
            MARGIN + 12, top + 24, f"{number}. {step.title}", size=15, extra=' font-weight="bold"'
        ),
        _text(MARGIN + 12, top + 44, step.what, size=10),
    ]
    if step.note:
        out.append(_text(MARGIN + 12, top + 58, step.note, size=10, extra=' fill="#555"'))
    lines = _code_lines(step.reasons)
    box_h = max(ROW_H - 16, len(lines) * CODE_LINE_H + 14)
    box_top = top + (ROW_H - box_h) // 2
    middle = top + ROW_H // 2
    out.append(
        f'  <line x1="{MARGIN + STEP_W}" y1="{middle}" x2="{CODES_X}" y2="{middle}" '
        'stroke="#c0392b" stroke-dasharray="4 3" marker-end="url(#refuse)"/>'
    )
    out.append(
        f'  <rect x="{CODES_X}" y="{box_top}" width="{CODES_W}" height="{box_h}" rx="6" '
        'fill="#fdecea" stroke="#c0392b"/>'
    )
    first = box_top + (box_h - len(lines) * CODE_LINE_H) // 2 + 11
    for i, line in enumerate(lines):
        out.append(_text(CODES_X + 10, first + i * CODE_LINE_H, line, size=11, font=MONO))
    return out


def _arrow(top: int) -> str:
    x = MARGIN + STEP_W // 2
    return (
        f'  <line x1="{x}" y1="{top}" x2="{x}" y2="{top + GAP - 2}" stroke="#3b6fd8" '
        'stroke-width="2" marker-end="url(#next)"/>'
    )


def render() -> str:
    """The whole SVG document, deterministic."""
    height = TOP + len(STEPS) * (ROW_H + GAP) + 36 + MARGIN
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="egressgate decision order">',
        "  <!-- generated by scripts/render_decision_diagram.py from egressgate/errors.py; "
        "do not edit -->",
        "  <defs>",
        '    <marker id="next" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" '
        'refX="9" refY="5" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#3b6fd8"/></marker>',
        '    <marker id="refuse" markerUnits="userSpaceOnUse" markerWidth="8" markerHeight="8" '
        'refX="7" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#c0392b"/></marker>',
        "  </defs>",
        f'  <rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _text(MARGIN, MARGIN + 14, "Each request, in this order: first refusal wins", size=15,
              extra=' font-weight="bold"'),
        _text(CODES_X, MARGIN + 38, "refused: status and reason code (status line, header, "
              "access log, metric)", size=11, extra=' fill="#c0392b"'),
    ]  # fmt: skip
    top = TOP
    for number, step in enumerate(STEPS, 1):
        out += _step(step, number, top)
        out.append(_arrow(top + ROW_H))
        top += ROW_H + GAP
    out += [
        f'  <rect x="{MARGIN}" y="{top}" width="{STEP_W}" height="36" rx="8" '
        'fill="#e6f4ea" stroke="#2e7d32"/>',
        _text(MARGIN + 12, top + 23, "allowed: bytes relayed, one access-log line", size=12),
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is current")
    args = parser.parse_args(argv)
    svg = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != svg:
            print(f"{TARGET} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(svg, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
