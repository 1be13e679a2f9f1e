"""The container files use only commands, options and config keys that exist (issue 6, item 4).

There is no Docker engine here, so nothing is built: the test reads docker/compose.yaml (with a
small parser of the YAML subset that file keeps to; PyYAML is not a dependency),
docker/Dockerfile, docker/entrypoint.sh and the shell blocks of docs/deploy.md, extracts every
``mragw`` invocation and every ``MRAGW_*`` variable, and checks them against the Typer app of
``gateway.cli.main`` (commands, sub-commands, option names, required options, argument counts)
and the config schema (``gateway.config.SECTIONS``). Renaming a command, an option or a config
key breaks it. The entrypoint itself is run for real (outside a container): first start
initialises the home from the environment and serves until ``mragw health`` says SERVING; a
second start reuses the home.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from gateway.cli.main import app
from gateway.config import ENV_PREFIX, SECTIONS, build_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PROMETHEUS = ROOT / "docker" / "prometheus.yml"
ALERT_RULES = ROOT / "docker" / "prometheus-alerts.yml"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "mragw-dashboard.json"
METRIC_NAME = re.compile(r"\bmragw_[a-z0-9_]+\b")
MRAGW = Path(sys.executable).parent / "mragw"

CONFIG_VAR = re.compile(r"\bMRAGW_([A-Z][A-Z0-9]*)__([A-Z][A-Z0-9_]*)\b")
ANY_VAR = re.compile(r"\bMRAGW_[A-Z][A-Z0-9_]*\b")
SHELL_STOP = {"||", "&&", ";", "|", "&", ">", ">>", "2>", "<", ")", "(", "`"}


# --- a parser for the YAML subset compose.yaml keeps to ---------------------------------------


class UnsupportedYamlError(ValueError):
    """compose.yaml used YAML outside the subset this test understands."""


@dataclasses.dataclass
class _Line:
    number: int
    indent: int
    text: str


def _strip_comment(text: str) -> str:
    quote: str | None = None
    for n, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (n == 0 or text[n - 1] in " \t"):
            return text[:n].rstrip()
    return text.rstrip()


def _scalar(text: str, where: int) -> Any:
    text = text.strip()
    if not text:
        return None
    if text[0] in "&*!|>{" or text.startswith(("<<", "---")):
        raise UnsupportedYamlError(f"line {where}: {text!r} is outside the supported subset")
    if text[0] == "[":
        if not text.endswith("]"):
            raise UnsupportedYamlError(f"line {where}: a flow list must fit on one line")
        inner = text[1:-1].strip()
        return [_scalar(item, where) for item in _csv(inner, where)] if inner else []
    if text[0] in "\"'":
        if len(text) < 2 or text[-1] != text[0]:
            raise UnsupportedYamlError(f"line {where}: unterminated string {text!r}")
        body = text[1:-1]
        if text[0] == '"' and "\\" in body:
            raise UnsupportedYamlError(f"line {where}: escapes in strings are not supported")
        return body
    return text


def _csv(text: str, where: int) -> list[str]:
    """The comma-separated items of a flow list's inside (commas in quotes do not count)."""
    items: list[str] = []
    current = ""
    quote: str | None = None
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
            current += char
        elif char in "[]{}":
            raise UnsupportedYamlError(f"line {where}: nested flow collections")
        elif char == ",":
            items.append(current.strip())
            current = ""
        else:
            current += char
    if quote:
        raise UnsupportedYamlError(f"line {where}: unterminated string")
    items.append(current.strip())
    return items


def _split_key(text: str, where: int) -> tuple[str, str] | None:
    match = re.fullmatch(r'("[^"]*"|[A-Za-z0-9_.\-/]+):(?:\s+(.*))?', text)
    if match is None:
        return None
    key = match.group(1).strip('"')
    return key, match.group(2) or ""


def parse_yaml_subset(text: str) -> Any:
    """Block mappings and sequences (of scalars or of mappings), scalars (plain, quoted), flow
    lists of scalars.

    Anything else (anchors, aliases, tags, flow mappings, block scalars, tabs, several
    documents) raises :class:`UnsupportedYamlError` instead of being misread.
    """
    lines: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise UnsupportedYamlError(f"line {number}: tab indentation")
        body = _strip_comment(raw)
        if body.strip():
            lines.append(_Line(number, len(body) - len(body.lstrip(" ")), body.strip()))
    value, end = _block(lines, 0, 0)
    if end != len(lines):
        raise UnsupportedYamlError(f"line {lines[end].number}: unexpected indentation")
    return value


def _block(lines: list[_Line], start: int, indent: int) -> tuple[Any, int]:
    if start >= len(lines):
        return None, start
    if lines[start].text.startswith("- ") or lines[start].text == "-":
        return _sequence(lines, start, indent)
    return _mapping(lines, start, indent)


def _sequence(lines: list[_Line], start: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    n = start
    while n < len(lines) and lines[n].indent == indent and lines[n].text.startswith("-"):
        line = lines[n]
        rest = line.text[1:]
        item = rest.strip()
        if _split_key(item, line.number) is not None:
            # A mapping item (``- key: value`` then its other keys aligned under ``key``, as
            # Prometheus and Grafana configurations write lists): read it as a block mapping
            # whose first line starts where ``key`` does.
            column = indent + 1 + len(rest) - len(rest.lstrip(" "))
            lines[n] = _Line(line.number, column, item)
            value, n = _mapping(lines, n, column)
            out.append(value)
            continue
        out.append(_scalar(item, line.number))
        n += 1
    return out, n


def _mapping(lines: list[_Line], start: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    n = start
    while n < len(lines) and lines[n].indent == indent:
        line = lines[n]
        split = _split_key(line.text, line.number)
        if split is None:
            raise UnsupportedYamlError(f"line {line.number}: {line.text!r} is not `key: value`")
        key, rest = split
        if key in out:
            raise UnsupportedYamlError(f"line {line.number}: duplicate key {key!r}")
        n += 1
        if rest:
            out[key] = _scalar(rest, line.number)
        elif n < len(lines) and lines[n].indent > indent:
            out[key], n = _block(lines, n, lines[n].indent)
        elif n < len(lines) and lines[n].indent == indent and lines[n].text.startswith("-"):
            out[key], n = _sequence(lines, n, indent)  # a list at the key's own indentation
        else:
            out[key] = None
    if n < len(lines) and lines[n].indent > indent:
        raise UnsupportedYamlError(f"line {lines[n].number}: unexpected indentation")
    return out, n


# --- the CLI, introspected ---------------------------------------------------------------------


def cli() -> Any:
    """The root command as the CLI parses it (Typer's Click-style command tree: groups have
    ``commands``; parameters have ``param_type_name`` "option" or "argument")."""
    command = typer.main.get_command(app)
    assert hasattr(command, "commands")
    return command


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def _arguments(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "argument"]


def invocation_problems(tokens: list[str]) -> list[str]:
    """Why ``mragw TOKENS`` would not parse: unknown command or option, a missing required
    option or option value, too many or too few arguments. Empty when it would."""
    command = cli()
    words = ["mragw"]
    n = 0
    while hasattr(command, "commands"):
        if n >= len(tokens) or tokens[n].startswith("-"):
            return [f"`{' '.join(words)}` needs a command"]
        found = command.commands.get(tokens[n])
        if found is None:
            return [f"`{' '.join(words)}` has no command {tokens[n]!r}"]
        command = found
        words.append(tokens[n])
        n += 1
    name = " ".join(words)
    options = {flag: p for p in _options(command) for flag in (*p.opts, *p.secondary_opts)}
    problems: list[str] = []
    given: set[str | None] = set()
    positionals: list[str] = []
    while n < len(tokens):
        word = tokens[n]
        n += 1
        if word == "--help":
            return []
        if word.startswith("-"):
            flag, has_value, _ = word.partition("=")
            option = options.get(flag)
            if option is None:
                problems.append(f"`{name}` has no option {flag}")
                continue
            given.add(option.name)
            if not option.is_flag and not has_value:
                if n >= len(tokens) or tokens[n].startswith("--"):
                    problems.append(f"`{name} {flag}` needs a value")
                else:
                    n += 1
        else:
            positionals.append(word)
    for option in _options(command):
        if option.required and option.name not in given:
            problems.append(f"`{name}` misses the required option {option.opts[0]}")
    arguments = _arguments(command)
    most = float("inf") if any(a.nargs < 0 for a in arguments) else sum(a.nargs for a in arguments)
    least = sum(max(a.nargs, 1) for a in arguments if a.required)
    if not least <= len(positionals) <= most:
        problems.append(f"`{name}` takes {least}..{most} arguments, got {positionals}")
    return problems


# --- finding mragw invocations ---------------------------------------------------------------


def shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def invocations(line: str) -> Iterator[list[str]]:
    """The arguments of each ``mragw COMMAND ...`` in one shell line (``mragw`` followed by a
    command word; a bare ``mragw`` is a user or a name, not a command)."""
    words = shell_words(line)
    for n, word in enumerate(words):
        if word != "mragw" or n + 1 >= len(words):
            continue
        if not re.fullmatch(r"[a-z][a-z-]*", words[n + 1]):
            continue
        args: list[str] = []
        for word_ in words[n + 1 :]:
            if word_ in SHELL_STOP:
                break
            if word_ != "$@":  # the entrypoint passes its arguments through
                args.append(word_)
        yield args


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, numbered by their first line."""
    pending = ""
    first = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def shell_blocks(markdown: str) -> Iterator[tuple[int, str]]:
    """The lines of the ```sh / ```console blocks of a Markdown text."""
    inside = False
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = line.strip().startswith("```")
        if fence:
            inside = not inside and line.strip()[3:].strip() in {"sh", "shell", "bash", "console"}
        elif inside:
            yield number, line


def all_invocations() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for path in (ENTRYPOINT, DOCKERFILE):
        for number, line in logical_lines(path.read_text()):
            if line.lstrip().startswith("#"):
                continue
            found += [(f"{path.name}:{number}", args) for args in invocations(line)]
    for number, line in logical_lines(COMPOSE.read_text()):
        # Commands in the header comments (the onboarding steps) and in string values.
        text = line.strip()
        if text.startswith("#"):
            text = text.lstrip("#").strip()
            if not text.startswith(("docker ", "mragw ")):
                continue
        else:
            text = _strip_comment(text)
        found += [(f"{COMPOSE.name}:{number}", args) for args in invocations(text)]
    code = "\n".join(line for _, line in shell_blocks(DEPLOY_DOC.read_text()))
    for number, line in logical_lines(code):
        found += [(f"{DEPLOY_DOC.name} block line {number}", args) for args in invocations(line)]
    return found


def compose() -> dict[str, Any]:
    document = parse_yaml_subset(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def gateway_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if (service.get("build") or {}).get("dockerfile") == "docker/Dockerfile"
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for _, line in logical_lines(DOCKERFILE.read_text()):
        text = line.strip()
        if text and not text.startswith("#"):
            keyword, _, rest = text.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def config_keys() -> set[str]:
    return {
        f"{ENV_PREFIX}{section.upper()}__{field.name.upper()}"
        for section, kind in SECTIONS.items()
        for field in dataclasses.fields(kind)
    }


# --- the tests -------------------------------------------------------------------------------


def test_invocation_checker_catches_renamed_commands_and_options() -> None:
    """The checker itself: it must tell a real invocation from a broken one."""
    assert invocation_problems(["health", "--home", "/h", "--target", "127.0.0.1:7444"]) == []
    assert (
        invocation_problems(["partner", "add", "b.bundle", "--home", "/h", "--fingerprint", "F"])
        == []
    )
    assert invocation_problems(["healthz", "--home", "/h"]) == ["`mragw` has no command 'healthz'"]
    assert "`mragw health` has no option --targets" in invocation_problems(
        ["health", "--home", "/h", "--targets", "x"]
    )
    assert invocation_problems(["init", "--home", "/h"]) == [
        "`mragw init` misses the required option --admin"
    ]
    assert invocation_problems(["partner", "--home", "/h"]) == ["`mragw partner` needs a command"]
    assert invocation_problems(["partner", "add", "--home", "/h", "--fingerprint", "F"])
    assert invocation_problems(["serve", "--home"]) == ["`mragw serve --home` needs a value"]


def test_every_mragw_command_and_option_exists_in_the_cli() -> None:
    found = all_invocations()
    commands = {" ".join(a for a in args if not a.startswith("-"))[:40] for _, args in found}
    # The extraction found what the files are about (else "no problems" would prove nothing).
    for must in ("init", "serve", "health", "partner export", "partner add"):
        assert any(c.startswith(must) for c in commands), (must, commands)
    assert any(where.startswith("Dockerfile") for where, _ in found)
    assert any(where.startswith("entrypoint.sh") for where, _ in found)
    assert any(where.startswith("compose.yaml") for where, _ in found)
    assert any(where.startswith("deploy.md") for where, _ in found)
    problems = [
        f"{where}: mragw {' '.join(args)}: {problem}"
        for where, args in found
        for problem in invocation_problems(args)
    ]
    assert problems == []


def test_every_config_key_exists_and_every_compose_value_is_valid() -> None:
    texts = {p.name: p.read_text() for p in (COMPOSE, DOCKERFILE, ENTRYPOINT, DEPLOY_DOC)}
    used = {m.group(0) for text in texts.values() for m in CONFIG_VAR.finditer(text)}
    assert "MRAGW_DATABASE__URL" in used
    assert sorted(used - config_keys()) == []
    for name, service in gateway_services().items():
        environment = service.get("environment") or {}
        overrides = {k: str(v) for k, v in environment.items() if CONFIG_VAR.fullmatch(k)}
        # The values must pass the gateway's own validation (a URL scheme, a time zone, ...).
        build_config(Path("/nonexistent"), {"node": {"admin": "EU"}}, overrides)
        assert overrides, f"{name}: no config override at all (the wiring is untested)"


def test_other_mragw_variables_are_read_by_the_entrypoint() -> None:
    """Variables that are not config keys are inputs of entrypoint.sh; none may be orphaned."""
    entrypoint = ENTRYPOINT.read_text()
    read = set(re.findall(r"\$\{(MRAGW_[A-Z0-9_]+)", entrypoint))
    assert {"MRAGW_INIT_ADMIN", "MRAGW_INIT_ENDPOINT", "MRAGW_HOME"} <= read
    for path in (COMPOSE, DOCKERFILE, DEPLOY_DOC):
        used = {v for v in ANY_VAR.findall(path.read_text()) if not CONFIG_VAR.fullmatch(v)}
        assert sorted(used - read) == [], path.name


def test_compose_runs_three_administrations_and_postgres_like_the_harness() -> None:
    document = compose()
    services = document["services"]
    gateways = gateway_services()
    assert sorted(gateways) == ["eu", "jp", "us"]
    databases = [n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:")]
    assert len(databases) == 1
    home = dockerfile_env()["MRAGW_HOME"]
    (volume,) = [rest for k, rest in dockerfile_instructions() if k == "VOLUME"]
    (data,) = parse_yaml_subset(f"v: {volume}")["v"]
    assert home.startswith(f"{data}/")
    codes = set()
    for name, service in gateways.items():
        env = service["environment"]
        codes.add(env["MRAGW_INIT_ADMIN"])
        assert env["MRAGW_INIT_ADMIN"] == name.upper()
        # Partners dial the service by name on the partner port the entrypoint listens on.
        assert env["MRAGW_INIT_ENDPOINT"] == f"{name}:7443"
        assert service["hostname"] == name
        assert any(port.endswith(":7443") for port in service["ports"])
        # The node home survives restarts: the image's data volume is a named volume.
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts[data] in document["volumes"]
    assert codes == {"EU", "JP", "US"}
    eu = gateways["eu"]
    url = eu["environment"]["MRAGW_DATABASE__URL"]
    assert url.startswith("postgresql+asyncpg://")
    host = url.split("@", 1)[1].split(":", 1)[0]
    assert host in databases
    assert eu["depends_on"][host]["condition"] == "service_healthy"
    assert services[host]["environment"]["POSTGRES_DB"] == url.rsplit("/", 1)[1]


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    base = next(rest for k, rest in instructions if k == "FROM")
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", base), base
    user = next(rest for k, rest in instructions if k == "USER")
    assert user.split(":")[0] not in {"root", "0"}
    # USER comes before ENTRYPOINT and HEALTHCHECK: neither runs as root.
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    health = next(rest for k, rest in instructions if k == "HEALTHCHECK")
    assert "CMD mragw health" in health
    copy = next(rest for k, rest in instructions if k == "COPY" and "docker/entrypoint.sh" in rest)
    target = copy.split()[-1]
    assert "--chmod=0755" in copy
    assert next(rest for k, rest in instructions if k == "ENTRYPOINT") == f'["{target}"]'
    exposed = {p for k, rest in instructions if k == "EXPOSE" for p in rest.split()}
    init = next(
        args
        for where, args in all_invocations()
        if where.startswith("entrypoint") and args[0] == "init"
    )
    listen = init[init.index("--listen") + 1]
    http = init[init.index("--http-listen") + 1]
    admin = init[init.index("--admin-listen") + 1]
    assert {listen.rsplit(":", 1)[1], http.rsplit(":", 1)[1]} <= exposed
    # The admin API stays inside the container; the health check dials it there.
    assert admin.startswith("127.0.0.1:")
    assert f"--target {admin}" in health
    assert admin.rsplit(":", 1)[1] not in exposed


def test_the_parser_refuses_yaml_it_does_not_understand() -> None:
    assert parse_yaml_subset('a:\n  b: "x # y"  # c\n  c: [1, "two"]\nd:\n- e\n') == {
        "a": {"b": "x # y", "c": ["1", "two"]},
        "d": ["e"],
    }
    for text in (
        "a: &x 1\n",
        "a: *x\n",
        "a: {b: 1}\n",
        "a: |\n  x\n",
        "a:\n  - b: 1\n     c: 2\n",  # a mapping item's keys out of line
        "a:\n  - b: 1\n  c: 2\n",  # a key after a list, at the list's indentation
    ):
        with pytest.raises(UnsupportedYamlError):
            parse_yaml_subset(text)


def test_the_parser_reads_lists_of_mappings() -> None:
    text = (
        "jobs:\n"
        "  - name: one\n"
        "    targets:\n"
        '      - hosts: ["a:1", "b:2"]\n'
        "        port: 9\n"
        "  -   name: two\n"
        "      flag: yes\n"
        "  - three\n"
        "top: x\n"
    )
    assert parse_yaml_subset(text) == {
        "jobs": [
            {"name": "one", "targets": [{"hosts": ["a:1", "b:2"], "port": "9"}]},
            {"name": "two", "flag": "yes"},
            "three",
        ],
        "top": "x",
    }


# --- monitoring: Prometheus and Grafana -------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the file or folder of this repository mounted there."""
    out: dict[str, Path] = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def _service_with_image(prefix: str) -> dict[str, Any]:
    (service,) = [s for s in compose()["services"].values() if s["image"].startswith(prefix)]
    return service


def _entrypoint_option(name: str) -> str:
    init = next(
        args
        for where, args in all_invocations()
        if where.startswith("entrypoint") and args[0] == "init"
    )
    return init[init.index(name) + 1]


def _yaml(path: Path) -> dict[str, Any]:
    document = parse_yaml_subset(path.read_text())
    assert isinstance(document, dict), path
    return document


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def _rule_exprs() -> list[str]:
    rules = [r for group in _yaml(ALERT_RULES)["groups"] for r in group["rules"]]
    return [str(r["expr"]) for r in rules] + [
        str(text) for r in rules for text in (r.get("annotations") or {}).values()
    ]


def test_prometheus_scrapes_every_gateway_on_its_http_listener() -> None:
    config = _yaml(PROMETHEUS)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mragw"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    # Each gateway serves /metrics where its entrypoint puts the HTTP listener, reached by
    # its service's host name on the compose network; no gateway is missing or scraped twice.
    http_port = _entrypoint_option("--http-listen").rsplit(":", 1)[1]
    expected = [f"{service['hostname']}:{http_port}" for service in gateway_services().values()]
    assert sorted(targets) == sorted(expected)
    assert len(set(targets)) == len(targets)
    prometheus = _service_with_image("prom/prometheus:")
    mounts = _mounts(prometheus)
    (config_flag,) = [c for c in prometheus["command"] if c.startswith("--config.file=")]
    assert mounts[config_flag.split("=", 1)[1]] == PROMETHEUS.resolve()
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == ALERT_RULES.resolve()
    for name in gateway_services():
        assert prometheus["depends_on"][name]["condition"] == "service_started"


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_service() -> None:
    grafana = _service_with_image("grafana/grafana:")
    mounts = _mounts(grafana)
    sources = _yaml(mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml")
    (source,) = sources["datasources"]
    prometheus_port = _service_with_image("prom/prometheus:")["ports"][0].rsplit(":", 1)[1]
    prometheus_name = next(
        name
        for name, service in compose()["services"].items()
        if service["image"].startswith("prom/prometheus:")
    )
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://{prometheus_name}:{prometheus_port}"
    providers = _yaml(mounts["/etc/grafana/provisioning/dashboards"] / "mragw.yml")["providers"]
    (provider,) = providers
    folder = provider["options"]["path"]
    assert mounts[f"{folder}/{DASHBOARD.name}"] == DASHBOARD.resolve()
    dashboard = json.loads(DASHBOARD.read_text())
    # Every panel and query names the provisioned data source.
    uids = {
        item["datasource"]["uid"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for item in [panel, *panel["targets"]]
    }
    assert uids == {source["uid"]}
    assert {v["datasource"]["uid"] for v in dashboard["templating"]["list"]} == {source["uid"]}
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles))


def _exported_names(exposition: str) -> set[str]:
    """Every sample name a family of this exposition may carry (from its TYPE lines)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


@pytest.mark.skipif(not MRAGW.exists(), reason=f"mragw is not installed next to {sys.executable}")
def test_every_metric_the_dashboard_and_alert_rules_use_is_exported(tmp_path: Path) -> None:
    queried = {m for text in _dashboard_exprs() + _rule_exprs() for m in METRIC_NAME.findall(text)}
    # The extraction found what the dashboard is about (else "all exported" would prove nothing).
    assert {
        "mragw_log_entries_total",
        "mragw_replication_lag_entries",
        "mragw_grpc_handling_seconds_bucket",
        "mragw_alerts_open",
    } <= queried
    home = tmp_path / "node"
    env = _entrypoint_env(
        home,
        MRAGW_INIT_ADMIN="JP",
        MRAGW_INIT_ENDPOINT="jp:7443",
        MRAGW_SERVER__SHUTDOWN_GRACE_S="0.2",
    )
    process = _serve_until_healthy(home, env)
    try:
        status = subprocess.run(
            [str(MRAGW), "status", "--home", str(home), "--json"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=30,
        )
        url = json.loads(status.stdout)["metrics_url"]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
            assert response.status == 200
            exposition = response.read().decode("utf-8")
    finally:
        _stop(process)
    exported = _exported_names(exposition)
    assert sorted(queried - exported) == []


# --- the entrypoint, run for real ------------------------------------------------------------


def _entrypoint_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PATH"] = f"{MRAGW.parent}{os.pathsep}{env.get('PATH', '')}"
    env["MRAGW_HOME"] = str(home)
    env.update(extra)
    return env


def _serve_until_healthy(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Arguments go to `mragw serve`: ephemeral loopback ports instead of the container's.
    process = subprocess.Popen(
        [
            "sh",
            str(ENTRYPOINT),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"entrypoint exited {process.returncode}: {err.decode()[-2000:]}")
        health = subprocess.run(
            [str(MRAGW), "health", "--home", str(home)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=30,
        )
        if health.returncode == 0:
            assert health.stdout.strip() == "SERVING"
            return process
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)
            pytest.fail(f"not healthy within 60 s: {health.stdout} {health.stderr}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)  # our own child, by pid (exec'd into mragw serve)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()[-2000:]
    return err.decode()


@pytest.mark.skipif(not MRAGW.exists(), reason=f"mragw is not installed next to {sys.executable}")
def test_entrypoint_initialises_once_from_the_environment_then_serves(tmp_path: Path) -> None:
    home = tmp_path / "node"
    missing = subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env=_entrypoint_env(home),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "MRAGW_INIT_ADMIN" in missing.stderr
    assert not (home / "mragw.toml").exists()

    env = _entrypoint_env(
        home,
        MRAGW_INIT_ADMIN="JP",
        MRAGW_INIT_ENDPOINT="jp:7443",
        MRAGW_NODE__TIMEZONE="Asia/Tokyo",
        MRAGW_SERVER__SHUTDOWN_GRACE_S="0.2",
    )
    first = _serve_until_healthy(home, env)
    log = _stop(first)
    assert "initialised JP" in log
    config = tomllib.loads((home / "mragw.toml").read_text())
    assert config["node"]["admin"] == "JP"
    # As the image's init writes it (the ports given to serve above only override them).
    assert config["server"]["endpoint"] == "jp:7443"
    assert config["server"]["listen"] == "0.0.0.0:7443"
    assert config["server"]["admin_listen"] == "127.0.0.1:7444"
    root_key = (home / "keys" / "root.key").read_bytes()

    # A restart reuses the home: no second init, same keys.
    second = _serve_until_healthy(home, env)
    assert "initialised" not in _stop(second)
    assert (home / "keys" / "root.key").read_bytes() == root_key
