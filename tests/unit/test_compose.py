"""docker-compose.yml, its opt-in files, the Dockerfile and the files they mount, checked against the compose
specification (the JSON schema vendored by check-jsonschema) and against the code: every K2 command parses with the
real CLI, every K2_ variable is a Settings field and the environment builds valid Settings, ports agree end to end,
images are pinned, secrets are required rather than defaulted, and nothing is published on the host but what
authenticates its callers (on the operator's PUBLISH_HOST) or, opted into, the host's loopback. There is no Docker
engine here to run the stack itself."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import pytest
import typer.main
import yaml
from pydantic import BaseModel

from k2_core.settings import REPO_ROOT, Settings
from tests.support.compose import (
    COMPOSE_FILE,
    DOCKERFILE,
    ENV_EXAMPLE,
    INTERPOLATION,
    OPT_IN_FILES,
    Publish,
    compose,
    environment,
    interpolate,
    k2_services,
    published,
    services,
    with_opt_in,
)

K2_IMAGE_COMMANDS = {"k2"}  # every role of the image, Dagster's included, is a `k2` command


def example_env() -> dict[str, str]:
    """.env.example with a stand-in for every secret left empty, as an operator fills it in."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value or f"filled-{name.lower()}".ljust(48, "-")  # secrets have minimum lengths
    return env


def settings_env_names() -> set[str]:
    """Every K2_ variable Settings reads: K2_<FIELD>, or K2_<SECTION>_<FIELD> for nested sections."""
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f"K2_{name}_{sub}".upper() for sub in annotation.model_fields}
        else:
            names.add(f"K2_{name}".upper())
    return names


def settings_for(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a K2 container would build: its interpolated environment and nothing else."""
    variables = example_env()
    for name in [n for n in os.environ if n.startswith("K2_")]:
        monkeypatch.delenv(name)
    for name, value in environment(services()[service]).items():
        monkeypatch.setenv(name, interpolate(value, variables))
    return Settings()


def container_ports(service: Mapping[str, Any]) -> set[int]:
    ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
    return ports | {int(p) for p in service.get("expose", [])}


def healthcheck_port(service: Mapping[str, Any]) -> int | None:
    match = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)", " ".join(service["healthcheck"]["test"]))
    return int(match.group(1)) if match else None


# --- the compose specification -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("path", [COMPOSE_FILE, *OPT_IN_FILES], ids=lambda p: p.name)
def test_compose_files_match_the_compose_specification(path: Path, validator: jsonschema.protocols.Validator) -> None:
    for stack in (compose(path), with_opt_in(path)):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(stack)]
        assert errors == []


def descendants(error: jsonschema.ValidationError) -> Iterator[jsonschema.ValidationError]:
    yield error
    for sub in error.context or ():
        yield from descendants(sub)


def test_the_schema_really_rejects_a_broken_file(validator: jsonschema.protocols.Validator) -> None:
    broken = compose()
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["kafka"]["ports"] = {"9094": "9094"}
    messages = " ".join(e.message for error in validator.iter_errors(broken) for e in descendants(error))
    assert "'intervall' does not match any of the regexes" in messages
    assert "is not of type 'array'" in messages


def test_the_stack_has_the_services_issue_5_asks_for() -> None:
    assert set(services()) == {
        "kafka",
        "schema-registry",
        "postgres",
        "minio",
        "minio-init",
        "prometheus",
        "grafana",
        "dagster-code-server",
        "dagster-webserver",
        "dagster-daemon",
        "api",
        "ingester",
        "book-ingester",
    }
    assert services()["postgres"]["image"].startswith("postgres:16.")
    kafka = environment(services()["kafka"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper


# --- what the stack publishes on the host --------------------------------------------------------------------

PUBLISH_HOST = "${PUBLISH_HOST:-127.0.0.1}"  # .env's address for what authenticates its callers; loopback by default
LOOPBACK = "127.0.0.1"
# Everything each compose file may publish on the host, and on which address: what authenticates every caller (the
# API's keys, Grafana's login, Kafka's SASL_SSL listener) on PUBLISH_HOST; what does not (Dagster, Prometheus), only
# when opted into and on the host's loopback only, for an SSH tunnel. Another port, another opt-in file or a publish
# without its address fails here.
PUBLISHED = {
    "docker-compose.yml": {Publish("api", PUBLISH_HOST, 8000), Publish("grafana", PUBLISH_HOST, 3000)},
    "docker-compose.admin.yml": {Publish("dagster-webserver", LOOPBACK, 3000), Publish("prometheus", LOOPBACK, 9090)},
    "docker-compose.kafka-external.yml": {Publish("kafka", PUBLISH_HOST, 9094)},
}
ALL_FILES = [COMPOSE_FILE, *OPT_IN_FILES]
# The apache/kafka image writes every other KAFKA_* variable into server.properties (its kafka-propertiesSpec.json).
KAFKA_IMAGE_EXCLUDES = {
    "KAFKA_VERSION",
    "KAFKA_HEAP_OPT",
    "KAFKA_LOG4J_OPTS",
    "KAFKA_OPTS",
    "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS",
    "KAFKA_GC_LOG_OPTS",
    "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS",
    "KAFKA_TOOLS_LOG4J_LOGLEVEL",
}
KAFKA_EXTERNAL = REPO_ROOT / "docker-compose.kafka-external.yml"


def kafka_environment(stack: Mapping[str, Any]) -> dict[str, str]:
    """The kafka service's variables as its container gets them from an .env shaped like .env.example."""
    return {name: interpolate(value, example_env()) for name, value in environment(stack["services"]["kafka"]).items()}


def test_the_opt_in_files_are_the_ones_checked_here() -> None:
    assert {path.name for path in ALL_FILES} == set(PUBLISHED)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_each_compose_file_publishes_only_what_it_may_and_on_loopback_by_default(path: Path) -> None:
    found = published(compose(path))
    assert len(found) == len(set(found))
    assert set(found) - PUBLISHED[path.name] == set(), f"{path.name} publishes what it may not"
    assert PUBLISHED[path.name] - set(found) == set(), f"{path.name} no longer publishes these: update PUBLISHED"
    stack = with_opt_in(path)
    for publish in published(stack):
        assert publish.host_ip is not None, f"{publish}: without an address Docker publishes on every interface"
        assert interpolate(publish.host_ip, example_env()) == LOOPBACK, publish  # .env.example as shipped
        assert interpolate(publish.host_ip, {}) == LOOPBACK, publish  # no .env value at all
    for name, service in stack["services"].items():
        assert service.get("network_mode") != "host", f"{name}: host networking publishes every port it listens on"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_kafka_speaks_plaintext_only_inside_the_compose_network(path: Path) -> None:
    """Every listener advertised under a name outside the compose network, and every published one, is SASL_SSL:
    PLAINTEXT (or SSL without SASL, or SASL over plaintext) would let whoever reaches it read and write every topic
    or see the credentials."""
    stack = with_opt_in(path)
    kafka = kafka_environment(stack)
    protocols = dict(pair.split(":") for pair in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    bound = {name: int(port) for name, port in re.findall(r"(\w+)://[^:,]*:(\d+)", kafka["KAFKA_LISTENERS"])}
    advertised = re.findall(r"(\w+)://([^:,]+):(\d+)", kafka["KAFKA_ADVERTISED_LISTENERS"])
    assert set(bound) <= set(protocols)
    assert advertised
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] not in {name for name, _, _ in advertised}
    for name, host, port in advertised:
        assert bound[name] == int(port)
        if host not in stack["services"]:
            assert protocols[name] == "SASL_SSL", f"{name} ({protocols[name]}) is advertised as {host}:{port}"
    ports = {publish.target for publish in published(stack) if publish.service == "kafka"}
    assert ports <= set(bound.values())
    for name, port in bound.items():
        if port in ports:
            assert protocols[name] == "SASL_SSL", f"{name} ({protocols[name]}) is published on the host"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_kafka_variables_survive_the_images_server_properties(path: Path) -> None:
    """The image drops a KAFKA_* value containing '=' (it splits each variable at every '='), silently: a JAAS
    entry, for one, must go through a file."""
    kafka = kafka_environment(with_opt_in(path))
    dropped = {name for name, value in kafka.items() if name.startswith("KAFKA_") and "=" in value}
    assert dropped <= KAFKA_IMAGE_EXCLUDES


def test_the_external_kafka_listener_takes_tls_and_credentials_from_env() -> None:
    """docker-compose.kafka-external.yml: TLS from a keystore mounted read-only from the path in .env, SASL/PLAIN
    with the user and password of .env, every one of them required; the JAAS file the command writes is the one
    KAFKA_OPTS names."""
    kafka = compose(KAFKA_EXTERNAL)["services"]["kafka"]
    env = environment(kafka)
    prefix = "KAFKA_LISTENER_NAME_EXTERNAL_"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env[f"{prefix}SSL_KEYSTORE_TYPE"] == "PKCS12"
    (volume,) = [str(v) for v in kafka["volumes"]]
    source, target, mode = volume.rsplit(":", 2)
    assert (target, mode) == (env[f"{prefix}SSL_KEYSTORE_LOCATION"], "ro")
    for value in (
        source,
        env[f"{prefix}SSL_KEYSTORE_PASSWORD"],
        env[f"{prefix}SSL_KEY_PASSWORD"],
        env["EXTERNAL_SASL_USER"],
        env["EXTERNAL_SASL_PASSWORD"],
    ):
        match = INTERPOLATION.fullmatch(value)
        assert match, value
        assert match.group(2) == "?", f"{value} must be required from .env"
    (jaas,) = re.findall(r"-Djava\.security\.auth\.login\.config=(\S+)", env["KAFKA_OPTS"])
    assert f"> {jaas}" in kafka["command"][-1]
    assert kafka["command"][-1].rstrip().endswith("exec /etc/kafka/docker/run")  # the image's own CMD


def run_kafka_external_command(
    tmp_path: Path, user: str, password: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The kafka command of docker-compose.kafka-external.yml, run by bash as the container would (`$$` is compose's
    `$`), with its JAAS file under tmp_path and the image's CMD replaced by `true`."""
    script = compose(KAFKA_EXTERNAL)["services"]["kafka"]["command"][-1].replace("$$", "$")
    jaas = tmp_path / "jaas.conf"
    (written,) = re.findall(r"> (\S+)", script)
    script = script.replace(written, str(jaas)).replace("exec /etc/kafka/docker/run", "exec true")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "EXTERNAL_SASL_USER": user,
        "EXTERNAL_SASL_PASSWORD": password,
        "KAFKA_LISTENER_NAME_EXTERNAL_SSL_KEYSTORE_PASSWORD": "0123456789abcdef",
    }
    done = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    return done, jaas


JAAS_READER = """
import javax.security.auth.login.AppConfigurationEntry;
import javax.security.auth.login.Configuration;

public class JaasReader {
    public static void main(String[] args) {
        for (AppConfigurationEntry entry : Configuration.getConfiguration().getAppConfigurationEntry("KafkaServer")) {
            System.out.println(entry.getLoginModuleName());
            System.out.println(entry.getControlFlag());
            entry.getOptions().forEach((key, value) -> System.out.println(key + "\t" + value));
        }
    }
}
"""


def test_the_external_kafka_user_reaches_a_jaas_file_the_jdk_reads(tmp_path: Path) -> None:
    """The JAAS file the kafka command writes from .env is read by the JDK's own JAAS parser (the one Kafka uses) as
    one PlainLoginModule user with that password, and only its owner may read it."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("no JDK here to read the JAAS file with (Debian package default-jre-headless)")
    password = "k2-" + "0123456789abcdef" * 3
    done, jaas = run_kafka_external_command(tmp_path, "feed", password)
    assert done.returncode == 0, done.stderr
    assert jaas.stat().st_mode & 0o777 == 0o600
    reader = tmp_path / "JaasReader.java"
    reader.write_text(JAAS_READER)
    read = subprocess.run(
        [java, f"-Djava.security.auth.login.config={jaas}", str(reader)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    module, flag, *options = read.stdout.splitlines()
    assert module == "org.apache.kafka.common.security.plain.PlainLoginModule"
    assert flag == "LoginModuleControlFlag: required"
    assert options == [f"user_feed\t{password}"]


@pytest.mark.parametrize("password", ['pass"word', "pass=word", "pass word", "pass\\word", "pässword", ""])
def test_the_external_kafka_listener_refuses_what_jaas_or_the_image_would_mangle(tmp_path: Path, password: str) -> None:
    done, jaas = run_kafka_external_command(tmp_path, "feed", password)
    assert done.returncode == 1
    assert not jaas.exists()
    assert "letters, digits" in done.stderr
    assert not password or password not in done.stderr + done.stdout


# --- images and health --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(services()))
def test_images_are_pinned_and_every_long_running_service_has_a_healthcheck(name: str) -> None:
    service = services()[name]
    if "build" in service:
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert service["image"] == "k2:local"
    else:
        repository, _, tag = service["image"].rpartition(":")
        assert repository
        assert "/" not in tag
        assert tag
        assert tag != "latest"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} is not a version"
    check = service["healthcheck"]
    if check.get("disable"):  # only one-shots, which others wait for to complete
        assert service["restart"] == "no"
        waiting = [
            other
            for other in services().values()
            if isinstance(other.get("depends_on"), dict)
            and other["depends_on"].get(name, {}).get("condition") == "service_completed_successfully"
        ]
        assert waiting, f"{name}: no service waits for this one-shot"
    else:
        assert check["test"][0] in {"CMD", "CMD-SHELL"}
        assert check["interval"]


def test_dependencies_wait_for_health() -> None:
    for name, service in services().items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert condition["condition"] in {
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            }


# --- commands -----------------------------------------------------------------------------------------------


class CommandRejected(Exception):
    """The CLI would exit with a usage error (click's exit code 2)."""


def click_command(executable: str) -> Any:
    """The click command behind a console script of ours (`k2`, a Typer app: Typer carries its own copy of
    click, so commands are duck-typed here) or of our dependencies (Dagster's entry points are `main()` wrappers
    around their module's click `cli`)."""
    if executable == "k2":
        from k2_cli.main import app

        return typer.main.get_command(app)
    (entry,) = entry_points(group="console_scripts", name=executable)
    command = entry.load()
    if not isinstance(command, click.Command):
        command = importlib.import_module(entry.module).cli
    assert isinstance(command, click.Command)
    return command


def parse(command: Any, argv: list[str]) -> list[str]:
    """Parse argv as the real CLI would (options, types, choices), descending through groups (ours take no
    group-level options); returns the subcommand path. Raises CommandRejected where the CLI would refuse."""
    path: list[str] = []
    parent = None
    while hasattr(command, "list_commands"):  # a group
        ctx = command.context_class(command, info_name=command.name, parent=parent)
        sub = command.get_command(ctx, argv[0]) if argv else None
        if sub is None:
            raise CommandRejected(f"{command.name}: no such command {argv[:1]}")
        path.append(argv[0])
        command, argv, parent = sub, argv[1:], ctx
    try:
        command.make_context(command.name, list(argv), parent=parent)
    except Exception as exc:
        if getattr(exc, "exit_code", None) == 2:
            raise CommandRejected(f"{command.name}: {exc}") from exc
        raise
    return path


@pytest.mark.parametrize("name", sorted(k2_services()))
def test_k2_service_commands_parse_with_the_real_cli(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [str(a) for a in k2_services()[name]["command"]]
    assert argv[0] in K2_IMAGE_COMMANDS
    monkeypatch.chdir(REPO_ROOT)  # the image's WORKDIR
    path = parse(click_command(argv[0]), argv[1:])
    assert path
    assert path == argv[1 : 1 + len(path)]
    check = [str(a) for a in k2_services()[name]["healthcheck"]["test"]]
    if check[:2] == ["CMD", "k2"]:  # a healthcheck that is a K2 command parses too
        assert parse(click_command("k2"), check[2:])


def test_the_parser_rejects_what_the_cli_rejects() -> None:
    with pytest.raises(CommandRejected):
        parse(click_command("k2"), ["no-such-command"])
    with pytest.raises(CommandRejected):
        parse(click_command("dagster-webserver"), ["-p", "not-a-port"])


# --- settings -----------------------------------------------------------------------------------------------


def test_every_k2_variable_in_the_stack_is_a_settings_field() -> None:
    valid = settings_env_names()
    assert {"K2_CATALOG_URI", "K2_KAFKA_BOOTSTRAP_SERVERS", "K2_S3_ENDPOINT", "K2_HOME"} <= valid
    used = {var for svc in services().values() for var in environment(svc) if var.startswith("K2_")}
    used |= {var for var in example_env() if var.startswith("K2_")}
    assert used
    assert used - valid == set()


@pytest.mark.parametrize("name", sorted(k2_services()))
def test_k2_service_environment_builds_the_production_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(name, monkeypatch)
    variables = example_env()
    assert urlsplit(settings.catalog_uri.get_secret_value()).scheme == "postgresql+psycopg"
    assert settings.warehouse == f"s3://{variables['WAREHOUSE_BUCKET']}/warehouse"
    assert settings.s3.access_key_id.get_secret_value() == variables["K2_S3_ACCESS_KEY_ID"]
    assert settings.s3.secret_access_key.get_secret_value() == variables["K2_S3_SECRET_ACCESS_KEY"]
    assert settings.kafka.schema_registry_url.get_secret_value().startswith("http://schema-registry:")


def test_ports_agree_between_services_settings_prometheus_and_grafana(monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = services()
    api = settings_for("api", monkeypatch)
    assert api.api.host == "0.0.0.0"
    assert api.api.port in container_ports(svcs["api"])
    assert healthcheck_port(svcs["api"]) == api.api.port
    ingester = settings_for("ingester", monkeypatch)
    assert ingester.api.host == "0.0.0.0"  # the ingester's /metrics binds the API host setting
    assert ingester.ingest.metrics_port in container_ports(svcs["ingester"])
    assert healthcheck_port(svcs["ingester"]) == ingester.ingest.metrics_port
    books = settings_for("book-ingester", monkeypatch)
    assert books.api.host == "0.0.0.0"  # the book ingester's /metrics binds the API host setting too
    assert books.ingest.book_metrics_port in container_ports(svcs["book-ingester"])
    assert healthcheck_port(svcs["book-ingester"]) == books.ingest.book_metrics_port

    prometheus = yaml.safe_load((REPO_ROOT / "config/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert targets["k2-api"] == [f"api:{api.api.port}"]
    assert targets["k2-ingester"] == [f"ingester:{ingester.ingest.metrics_port}"]
    assert targets["k2-book-ingester"] == [f"book-ingester:{books.ingest.book_metrics_port}"]

    dagster = settings_for("dagster-webserver", monkeypatch).maintenance
    assert dagster.dagster_host == "0.0.0.0"
    assert dagster.dagster_port in container_ports(svcs["dagster-webserver"])
    assert healthcheck_port(svcs["dagster-webserver"]) == dagster.dagster_port
    # the webserver and the daemon dial the code server's service on the port it listens on and is checked on
    code = svcs["dagster-code-server"]
    assert dagster.dagster_code_host == "dagster-code-server"
    assert dagster.dagster_code_port in container_ports(code)
    assert code["command"][code["command"].index("--host") + 1] == "0.0.0.0"
    health = code["healthcheck"]["test"]
    assert health[health.index("-p") + 1] == str(dagster.dagster_code_port)
    for service in ("dagster-webserver", "dagster-daemon"):
        assert settings_for(service, monkeypatch).maintenance == dagster
        assert svcs[service]["depends_on"]["dagster-code-server"] == {"condition": "service_healthy"}

    # Addresses the K2 services dial are the ports those services listen on.
    kafka = environment(svcs["kafka"])
    assert f"PLAINTEXT://{api.kafka.bootstrap_servers}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    registry = urlsplit(api.kafka.schema_registry_url.get_secret_value())
    assert environment(svcs["schema-registry"])["SCHEMA_REGISTRY_LISTENERS"].endswith(f":{registry.port}")
    assert urlsplit(api.s3.endpoint).hostname == "minio"
    assert urlsplit(api.s3.endpoint).port in container_ports(svcs["minio"])
    catalog = urlsplit(api.catalog_uri.get_secret_value())
    assert (catalog.hostname, catalog.port, catalog.path) == ("postgres", 5432, "/k2")

    datasource = yaml.safe_load((REPO_ROOT / "config/grafana/provisioning/datasources/prometheus.yaml").read_text())
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname == "prometheus"
    assert f"--web.listen-address=:{url.port}" in svcs["prometheus"]["command"]


# --- secrets ------------------------------------------------------------------------------------------------


def test_secrets_are_required_from_the_environment_and_documented() -> None:
    """In docker-compose.yml and its opt-in files alike."""
    text = "\n".join(path.read_text() for path in ALL_FILES)
    required = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(2) == "?"}
    defaulted = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(2) == "-"}
    secret_words = ("PASSWORD", "SECRET")
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "K2_S3_SECRET_ACCESS_KEY", "GRAFANA_ADMIN_PASSWORD"} <= required
    assert {"KAFKA_EXTERNAL_PASSWORD", "KAFKA_EXTERNAL_KEYSTORE_PASSWORD"} <= required
    assert not any(word in name for name in defaulted for word in secret_words)
    for service in (svc for path in ALL_FILES for svc in compose(path)["services"].values()):
        for name, value in environment(service).items():
            if any(word in name for word in secret_words):
                assert value.startswith("${"), f"{name} must come from the environment"
                assert ":?" in value, f"{name} must be required: ${{VAR:?message}}"
    example = {line.partition("=")[0]: line.partition("=")[2] for line in ENV_EXAMPLE.read_text().splitlines()}
    assert required <= set(example)  # every required variable is documented ...
    assert all(example[name] == "" for name in required)  # ... and shipped without a value
    dockerfile = DOCKERFILE.read_text()
    assert not re.search(r"(?im)^\s*(ENV|ARG)\b.*(PASSWORD|SECRET)", dockerfile)


def test_interpolation_fails_like_compose_when_a_secret_is_missing() -> None:
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        interpolate("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}", {})
    assert interpolate("s3://${WAREHOUSE_BUCKET:-k2-lake}/warehouse", {}) == "s3://k2-lake/warehouse"


# --- the Dockerfile -----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_builds_one_pinned_non_root_image_running_the_k2_cli() -> None:
    instructions = dockerfile_instructions()
    (base,) = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base)
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    (cmd,) = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert cmd[0] in pyproject["project"]["scripts"]
    assert parse(click_command(cmd[0]), cmd[1:]) == [cmd[1]]
    copied = {rest.split()[0] for keyword, rest in instructions if keyword == "COPY"}
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"config", "schemas", "workspace.yaml", "pyproject.toml"} <= copied
    exposed = {int(p) for keyword, rest in instructions if keyword == "EXPOSE" for p in rest.split()}
    defaults = Settings()
    assert {defaults.api.port, defaults.ingest.metrics_port, defaults.maintenance.dagster_port} <= exposed


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".k2", ".git"} <= set(ignored)


# --- mounted configuration ----------------------------------------------------------------------------------


def mounts(service: str) -> dict[str, str]:
    """container path -> host path (relative to the repo) for bind mounts of `service`."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            out[target] = source.removeprefix("./")
    return out


def test_bind_mounts_exist_and_prometheus_grafana_find_their_files() -> None:
    for name in services():
        for source in mounts(name).values():
            assert (REPO_ROOT / source).exists(), f"{name}: {source}"
    prometheus = mounts("prometheus")
    config_flag = next(a for a in services()["prometheus"]["command"] if a.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    host_dir = REPO_ROOT / prometheus[str(config_path.parent)]
    assert (host_dir / config_path.name).is_file()
    for rule_file in yaml.safe_load((host_dir / config_path.name).read_text())["rule_files"]:
        assert (host_dir / rule_file).is_file()
    provider = yaml.safe_load((REPO_ROOT / "config/grafana/provisioning/dashboards/k2.yaml").read_text())
    dashboards_dir = mounts("grafana")[provider["providers"][0]["options"]["path"]]
    assert sorted((REPO_ROOT / dashboards_dir).glob("*.json"))
    assert mounts("grafana")["/etc/grafana/provisioning"] == "config/grafana/provisioning"
    home = environment(services()["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO_ROOT / dashboards_dir / Path(home).name).is_file()


def test_dagster_services_share_one_instance_on_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code server, the webserver and the daemon write the same dagster.yaml (k2_dagster.launcher, from their K2
    settings) into the volume they share; Dagster's own schema accepts it; the storage is database `dagster` of the
    postgres service, which postgres-init.sql creates, and no password is written to the file."""
    from dagster._core.instance.config import dagster_instance_config

    from k2_dagster.launcher import POSTGRES_URL_ENV, dagster_home, dagster_process, storage_url

    texts, urls = set(), set()
    for service in ("dagster-code-server", "dagster-webserver", "dagster-daemon"):  # the code server runs the jobs
        settings = settings_for(service, monkeypatch)
        volumes = [str(v) for v in services()[service]["volumes"]]
        assert f"dagster-storage:{dagster_home(settings)}" in volumes
        settings.home = tmp_path / service
        proc = dagster_process(settings, {}, service.removeprefix("dagster-"))  # type: ignore[arg-type]
        config_file = Path(proc.env["DAGSTER_HOME"]) / "dagster.yaml"
        texts.add(config_file.read_text())
        urls.add(proc.env[POSTGRES_URL_ENV])
        monkeypatch.setenv(POSTGRES_URL_ENV, proc.env[POSTGRES_URL_ENV])
        config, custom_class = dagster_instance_config(proc.env["DAGSTER_HOME"])  # Dagster's own validation
        assert custom_class is None
        assert config["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
        assert storage_url(settings) == proc.env[POSTGRES_URL_ENV]
    assert len(texts) == 1
    assert example_env()["POSTGRES_PASSWORD"] not in texts.pop()
    (url,) = urls
    parsed = urlsplit(url)
    assert (parsed.scheme, parsed.hostname, parsed.port) == ("postgresql+psycopg2", "postgres", 5432)
    assert parsed.password == example_env()["POSTGRES_PASSWORD"]
    init_sql = (REPO_ROOT / "config/dagster/postgres-init.sql").read_text()
    assert f"CREATE DATABASE {parsed.path.lstrip('/')};" in init_sql
