"""The Dockerfile and .dockerignore, checked without a container engine (none runs here).

Parses the Dockerfile and checks what can be checked statically: a multi-stage python:3.11-slim
build, a non-root USER equal to the uid the Kubernetes manifests pin, ENTRYPOINT + CMD equal to
the Deployment's args, a HEALTHCHECK that is `egressgate check --live` on the documented config
path, and that every egressgate subcommand and flag the Dockerfile runs exists (by running
`python -m egressgate <sub> --help`). The .dockerignore allowlist is evaluated with Docker's
rules to show that the build's COPY sources are in the context and the rest is not.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from egressgate.config.model import DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, Config, ListenAddress
from egressgate.tools import k8s_render

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
DOCS = REPO_ROOT / "docs" / "kubernetes.md"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # continuation lines joined


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image} has no {keyword}"
        return found[-1]


def _instructions(text: str) -> list[Instruction]:
    """Dockerfile syntax: comment lines (also inside continuations) dropped, `\\` joins lines."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, arguments = full.partition(" ")
        out.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


@cache
def _stages() -> tuple[Stage, ...]:
    instructions = _instructions(DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    image = name = None
    for instruction in instructions:
        if instruction.keyword == "ARG" and current is None:
            key, _, default = instruction.arguments.partition("=")
            args[key] = default
        elif instruction.keyword == "FROM":
            if current is not None:
                stages.append(Stage(str(image), name, tuple(current)))
            parts = instruction.arguments.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            current = []
        else:
            assert current is not None, f"{instruction.keyword} before FROM"
            current.append(instruction)
    stages.append(Stage(str(image), name, tuple(current or ())))
    return tuple(stages)


def _final() -> Stage:
    return _stages()[-1]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec (JSON) form: {arguments}"
    return [str(v) for v in value]


def _healthcheck_command() -> list[str]:
    arguments = _final().last("HEALTHCHECK")
    _options, sep, command = arguments.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    return _exec_form(command)


# ---------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------


def test_multi_stage_build_on_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        assert stage.image.startswith("python:3.11-slim"), stage.image
    # The final stage builds nothing: it copies the venv from a build stage.
    final = _final()
    assert not [r for r in final.all("RUN") if "pip" in r]
    copies = final.all("COPY")
    assert any(c.startswith("--from=") and "/opt/egressgate" in c for c in copies), copies


def test_runs_as_the_non_root_uid_the_manifests_pin() -> None:
    user = _final().last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so that runAsNonRoot can check it"
    assert int(uid) != 0
    assert int(uid) == k8s_render.RUN_AS_ID
    assert int(gid or uid) == k8s_render.RUN_AS_ID


def test_entrypoint_and_cmd_are_what_the_deployment_runs() -> None:
    entrypoint = _exec_form(_final().last("ENTRYPOINT"))
    cmd = _exec_form(_final().last("CMD"))
    assert entrypoint == ["egressgate"]
    assert cmd == list(k8s_render.RUN_ARGS)
    # The Deployment sets only args, relying on this ENTRYPOINT.
    objects = k8s_render.render(Config(), "", k8s_render.RenderOptions(app_labels={"app": "x"}))
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container
    assert container["args"] == cmd


def test_healthcheck_is_the_live_check_on_the_config() -> None:
    assert _healthcheck_command() == list(k8s_render.LIVE_CHECK_COMMAND)


def test_config_path_agrees_everywhere() -> None:
    path = k8s_render.CONFIG_PATH
    assert path == "/etc/egressgate/egress.yaml"
    assert path in _exec_form(_final().last("CMD"))
    assert path in _healthcheck_command()
    # The image ships a config at that path, so the same CMD works without a mounted file.
    assert any(c.split()[-1] == path for c in _final().all("COPY")), _final().all("COPY")
    assert path in DOCS.read_text(), "docs/kubernetes.md documents the config path"
    assert path in DOCKERFILE.read_text().split("ARG", 1)[0], "the header comment documents it"


def test_exposes_the_default_ports() -> None:
    exposed = {int(p.split("/")[0]) for e in _final().all("EXPOSE") for p in e.split()}
    assert ListenAddress.parse(DEFAULT_LISTEN).port in exposed
    assert ListenAddress.parse(DEFAULT_ADMIN_LISTEN).port in exposed


def test_read_only_root_filesystem_friendly() -> None:
    env = " ".join(_final().all("ENV"))
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)
    assert not _final().all("VOLUME"), "k8s mounts what it needs; VOLUME makes anonymous ones"
    workdir = _final().last("WORKDIR")
    assert workdir == "/tmp" or workdir.startswith("/tmp/")


def test_the_image_has_nft_when_the_sidecar_init_container_uses_it() -> None:
    """`k8s render --mode transparent` runs `nft` in an init container of the egressgate image
    itself unless --init-image says otherwise: the image must ship nftables."""
    from egressgate.config.load import load_config_text
    from egressgate.tools import k8s_sidecar

    text = "transparent_listen: 127.0.0.1:3130\ndns_listen: 127.0.0.1:5353\nallow: [a.test]\n"
    options = k8s_render.RenderOptions()
    objects = k8s_sidecar.render_sidecar(load_config_text(text), text, options)
    pods = [o["template"]["spec"] for o in objects if o.get("kind") == "PodTemplate"]
    assert pods, [o.get("kind") for o in objects]
    init = pods[0]["initContainers"][0]
    assert init["image"] == options.image  # the same image as the proxy
    assert init["command"][0] == "nft"
    runs = " ".join(_final().all("RUN"))
    assert re.search(r"apt-get install[^&]*\bnftables\b", runs), runs
    assert "rm -rf /var/lib/apt/lists" in runs  # no package lists left in the image


# ---------------------------------------------------------------------------------------------
# The egressgate commands the Dockerfile runs exist, with the flags it gives them
# ---------------------------------------------------------------------------------------------


def _egressgate_invocations() -> list[list[str]]:
    """Every `egressgate SUB --flags` the Dockerfile runs (ENTRYPOINT+CMD, HEALTHCHECK, RUN)."""
    found = [
        _exec_form(_final().last("ENTRYPOINT"))[1:] + _exec_form(_final().last("CMD")),
        _healthcheck_command()[1:],
    ]
    for stage in _stages():
        for run in stage.all("RUN"):
            for part in re.split(r"&&|\|\||;|>", run):
                words = shlex.split(part)
                if words and words[0].endswith("/egressgate"):
                    found.append(words[1:])
    return found


INVOCATIONS = _egressgate_invocations()


def _help(subcommand: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressgate", subcommand, "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_dockerfile_runs_the_commands_we_expect() -> None:
    subcommands = {words[0] for words in INVOCATIONS}
    assert subcommands == {"run", "check"}


@pytest.mark.parametrize("words", INVOCATIONS, ids=lambda w: " ".join(w))
def test_subcommand_and_flags_exist(words: list[str]) -> None:
    subcommand, flags = words[0], [w for w in words[1:] if w.startswith("--")]
    result = _help(subcommand)
    if "invalid choice" in result.stderr:
        pytest.skip(f"`egressgate {subcommand}` is not built yet (not registered in the CLI)")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", result.stdout), (
            f"`egressgate {subcommand}` has no {flag}"
        )


# ---------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus `**`) as a regex for a whole path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/").removeprefix("./")
        rules.append((negated, _ignore_regex(pattern)))
    return rules


def _in_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in _ignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def _build_sources() -> list[str]:
    sources = []
    for stage in _stages():
        for copy in stage.all("COPY"):
            words = copy.split()
            if any(w.startswith("--from=") for w in words):
                continue
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def test_build_context_holds_what_the_build_copies() -> None:
    sources = _build_sources()
    assert "pyproject.toml" in sources
    # setuptools refuses to build a wheel whose `readme` file is missing.
    readme = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if isinstance(readme, str):
        assert readme in sources
    for source in sources:
        assert _in_context(source), f"{source} is copied but .dockerignore leaves it out"
    for inside in ("egressgate/__init__.py", "egressgate/data/noproxy_matrix.json"):
        assert _in_context(inside), inside


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        "tests/conftest.py",
        "egress.yaml",  # a local config may hold credentials
        "egressgate/__pycache__/main.cpython-311.pyc",
        "egressgate/tools/__pycache__/k8s_render.cpython-311.pyc",
        "egressgate.egg-info/PKG-INFO",
        ".mypy_cache/3.11/cache.db",
    ],
)
def test_build_context_leaves_the_rest_out(path: str) -> None:
    assert not _in_context(path)
