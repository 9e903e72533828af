"""docs/decision-order.svg, the README's picture, is what scripts/render_decision_diagram.py
draws from egressgate/errors.py today, and places every reason code a code path can emit."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from egressgate.errors import Reason

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render_decision_diagram.py"
# Defined but emitted by no code path (README, "Refusal reasons"), or not a refusal at all.
NOT_ON_THE_PICTURE = {Reason.ALLOWED, Reason.REPORTED, Reason.NO_POLICY, Reason.UNSUPPORTED_METHOD}
# Emitted only by the DNS guard (dns_listen), whose own order is a table in docs/transparent.md.
NOT_ON_THE_PICTURE |= {Reason.DNS_QUERY_TYPE_REFUSED, Reason.DNS_OVERLOADED}
# Emitted only by the transparent listener, before any name exists: its own table is in
# docs/transparent.md ("How a connection is judged").
NOT_ON_THE_PICTURE |= {Reason.NO_DESTINATION_NAME}
# Emitted only for intercepted hosts (requests judged inside the tunnel, the re-encrypted leg)
# and by the leak check: their own table is in docs/interception.md ("Refusals").
NOT_ON_THE_PICTURE |= {
    Reason.RULE_NOT_MATCHED,
    Reason.PATH_AMBIGUOUS,
    Reason.SECRET_LEAK,
    Reason.UPSTREAM_BAD_CERTIFICATE,
}


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_decision_diagram", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_emitted_reason_is_on_exactly_one_step() -> None:
    placed = [reason for step in script().STEPS for reason in step.reasons]
    assert len(placed) == len(set(placed)), "a reason is drawn on two steps"
    assert set(placed) == set(Reason) - NOT_ON_THE_PICTURE


def test_the_steps_are_in_the_documented_order() -> None:
    titles = [step.title for step in script().STEPS]
    order = ["client", "policy", "name", "port", "DNS", "address vetting", "connect", "SNI"]
    assert titles == order


def test_the_committed_svg_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    svg = (ROOT / "docs" / "decision-order.svg").read_text(encoding="utf-8")
    for reason in set(Reason) - NOT_ON_THE_PICTURE:
        assert f"{reason.status} {reason.value}" in svg


def test_readme_shows_the_picture_and_how_to_rebuild_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    head = readme[: readme.index("## What it is for")]
    assert "](docs/decision-order.svg)" in head
    assert "python3 scripts/render_decision_diagram.py" in head
