"""Offline validation of the deployment files: Dockerfile, docker compose, Kubernetes.

Nothing here needs a container engine, a cluster or the network:

* every Kubernetes document, and every overlay rendered by ``kustomize_lite``,
  validates against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
  strict: unknown fields are errors);
* compose and the manifests give every service what its Settings class needs
  (introspected), the values parse, and no RUNSTREAM_* variable is misspelt;
* ``docker compose config`` and ``kustomize build`` (installed by ``deploy/local/tools.sh``,
  cached) must agree with the lite readers the checks above use.
"""

from __future__ import annotations

import atexit
import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.compose_lite import (
    InterpolationError,
    environment_of,
    interpolate,
    load_compose,
    read_env_file,
    references_in,
)
from deploy.kustomize_lite import (
    KustomizeError,
    build,
    containers,
    load_documents,
    pod_specs,
    referenced_files,
    strategic_merge,
)
from deploy.settings_env import (
    CONDITIONAL_SECRETS,
    known_variables,
    load_settings,
    needed_variables,
    service_entry_points,
    setting_fields,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "production": K8S / "overlays" / "production",
}
OVERLAYS = ["dev", "production"]
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
# Oldest Kubernetes minor we promise to support; schemas of that version are used.
KUBERNETES_VERSION = "1.30"
HEALTH = ["runstream", "health", "--heartbeat-file"]
SERVICES = sorted(service_entry_points())


# ---------------------------------------------------------------------- helpers


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:  # pragma: no cover - message for a missing dev dependency
        pytest.fail(
            "kubernetes-validate is not installed: add it to the root dev dependency group "
            "(uv add --dev kubernetes-validate) and run `uv sync --all-packages --group dev`"
        )
    return kv


def validate_k8s(resource: dict[str, Any], where: str) -> None:
    kv = kubernetes_validate()
    try:
        kv.validate(resource, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"{where}: {resource['kind']}/{resource['metadata']['name']}: {path}: {exc.message}"
        )


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (CPU in cores, memory in bytes)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match, f"not a quantity: {text!r}"
    number, unit = match.groups()
    assert unit in units or unit == "", f"unknown unit in {text!r}"
    return float(number) * units.get(unit, 1)


def stand_in_secret(file_name: str) -> str:
    """What an operator puts into a secret file of the production overlay (not a placeholder)."""
    if file_name == "postgres-dsn":
        return "postgresql://runstream:pg-9c1f27d4e8@postgres.example.org:5432/runstream"
    if file_name.endswith(".crt"):
        return "-----BEGIN CERTIFICATE-----\nc3RhbmQtaW4=\n-----END CERTIFICATE-----\n"
    if file_name == "slurm-jwt-key":
        return "base64:" + base64.b64encode(b"stand-in jwt key of 32 bytes....").decode()
    return f"{file_name}-3b8e0c5a91d2"


def generator_files(directory: Path) -> list[Path]:
    """The files the secretGenerator of ``directory`` reads (relative to it)."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    return [
        Path(entry.partition("=")[2] or entry)
        for generator in kustomization.get("secretGenerator", [])
        for entry in generator.get("files", [])
    ]


@functools.cache
def k8s_with_secrets() -> Path:
    """A copy of deploy/k8s whose production secret files exist (stand-ins), as an
    operator's checkout would have them; the real tree renders no production without them."""
    root = Path(tempfile.mkdtemp(prefix="rs-k8s-"))
    atexit.register(shutil.rmtree, root, True)
    shutil.copytree(K8S, root / "k8s")
    production = root / "k8s" / "overlays" / "production"
    for relative in generator_files(production):
        (production / relative).write_text(stand_in_secret(relative.name), encoding="utf-8")
    return root / "k8s"


def renderable(name: str) -> Path:
    """The directory ``kustomize build`` renders for ``name`` (production: with its secrets)."""
    if name == "production":
        return k8s_with_secrets() / "overlays" / "production"
    return KUSTOMIZATIONS[name]


@functools.cache
def _rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(build(renderable(name)))


def rendered(name: str) -> list[dict[str, Any]]:
    """``kustomize build`` of base/dev/production (a fresh copy: tests may not share state)."""
    return copy.deepcopy(list(_rendered(name)))


def configmap(resources: list[dict[str, Any]]) -> dict[str, str]:
    maps = by_kind(resources, "ConfigMap")
    assert list(maps) == ["runstream-config"], list(maps)
    return {k: str(v) for k, v in maps["runstream-config"]["data"].items()}


def container_env(resources: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps/Secrets and env.

    A secretKeyRef to a Secret that is not rendered (created with kubectl) yields a
    stand-in value; the secret's presence is checked separately."""
    maps = by_kind(resources, "ConfigMap")
    secrets = by_kind(resources, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps, f"envFrom ConfigMap {name} does not exist"
            env.update({k: str(v) for k, v in maps[name].get("data", {}).items()})
        else:
            pytest.fail(f"unsupported envFrom {source}")
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = secrets.get(ref["name"])
            if secret is None:
                env[item["name"]] = f"{ref['name']}-{ref['key']}-from-kubectl"
            else:
                data = secret.get("stringData", {}) | {
                    k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()
                }
                assert ref["key"] in data, f"Secret {ref['name']} has no key {ref['key']}"
                env[item["name"]] = data[ref["key"]]
    return env


def served_service(args: list[str]) -> str | None:
    return args[1] if len(args) >= 2 and args[0] == "serve" else None


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    else:
        yield path, value


def find(value: Any, path: tuple[Any, ...]) -> Any:
    """Follow ``path``; list items are found by their ``name`` (or mountPath)."""
    for part in path:
        value = value[part]
    return value


def patch_in(rendered_resource: Any, patch: Any) -> list[str]:
    """Leaves of ``patch`` missing from ``rendered_resource`` (lists matched by name)."""
    missing: list[str] = []
    if isinstance(patch, dict):
        for key, item in patch.items():
            if key not in rendered_resource:
                missing.append(str(key))
            else:
                missing += [f"{key}.{m}" for m in patch_in(rendered_resource[key], item)]
    elif (
        isinstance(patch, list)
        and patch
        and all(isinstance(i, dict) and "name" in i for i in patch)
    ):
        index = {i.get("name"): i for i in rendered_resource}
        for item in patch:
            if item["name"] not in index:
                missing.append(f"[{item['name']}]")
            else:
                missing += [f"[{item['name']}].{m}" for m in patch_in(index[item["name"]], item)]
    elif rendered_resource != patch:
        missing.append(f"= {patch!r} (is {rendered_resource!r})")
    return missing


def unknown_runstream_variables(env: dict[str, str], known: frozenset[str]) -> list[str]:
    return sorted(k for k in env if k.upper().startswith("RUNSTREAM_") and k.upper() not in known)


@pytest.fixture(scope="module")
def known() -> frozenset[str]:
    return known_variables()


# ----------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(
            fnmatch("/".join(parts[: i + 1]), pattern)
            or (pattern.startswith("**/") and fnmatch(parts[i], pattern[3:]))
            for i in range(len(parts))
        )
        if hit:
            result = not negate
    return result


def test_dockerfile_builds_one_runstream_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
             for word, rest in instructions if word == "FROM"]  # fmt: skip
    assert froms, "no FROM"
    assert all(f == "python:3.11-slim" for f in froms), froms
    python = (REPO / ".python-version").read_text().strip()
    assert froms[0].startswith(f"python:{python}"), "image Python differs from .python-version"

    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install [^&]*\buv\b", runs), "uv must come from PyPI via pip"
    sync = re.findall(r"uv sync ([^&]*)", runs)
    assert sync, "no uv sync"
    for flags in sync:
        for flag in ("--frozen", "--no-dev", "--all-packages"):
            assert flag in flags.split(), f"uv sync without {flag}: {flags}"
    envs = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in envs

    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "no USER"
    assert users[-1] not in ("root", "0"), "the image must not run as root"
    assert [rest for word, rest in instructions if word == "ENTRYPOINT"][-1] == '["runstream"]'
    assert [rest for word, rest in instructions if word == "CMD"][-1] == '["--help"]'


def test_dockerfile_copies_every_workspace_member_and_nothing_ignored() -> None:
    root = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    members = root["tool"]["uv"]["workspace"]["members"]
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY"]
    sources = [part for c in copies if not c[0].startswith("--from") for part in c[:-1]]
    patterns = dockerignore_patterns()
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
        assert not ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    # The dependency layer needs every member's pyproject.toml before the sources.
    for member in members:
        assert f"{member}/pyproject.toml" in sources, f"Dockerfile misses {member}/pyproject.toml"
    for needed in ("pyproject.toml", "uv.lock", "README.md", "src"):
        assert needed in sources, f"Dockerfile does not COPY {needed}"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".state/kafka/x", ".cache/jars", ".git/HEAD",
                 "libs/common/src/runstream_common/__pycache__/x.pyc", "deploy/compose/.env"):  # fmt: skip
        assert ignored(path, patterns), f"{path} would be sent to the docker daemon"
    for path in ("uv.lock", "services/executor/src/runstream_executor/app.py"):
        assert not ignored(path, patterns), f"{path} is needed by the build"


# --------------------------------------------------------------------- compose


# .env.example ships no secret: the checks fill them in as an operator would.
STAND_IN_SECRETS = {
    "POSTGRES_PASSWORD": "pg-" + "7f3a" * 6,
    "SLURM_JWT_KEY": "k-" + "c0de" * 8,
    "RUNSTREAM_WEB_WRITE_TOKEN": "wt-" + "51ab" * 6,
}


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE) | STAND_IN_SECRETS


@pytest.fixture(scope="module")
def compose(env_example: dict[str, str]) -> dict[str, Any]:
    return load_compose(COMPOSE_FILE, env_example)


def one_shot(services: dict[str, Any]) -> set[str]:
    return {
        target
        for svc in services.values()
        for target, dep in (svc.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }


def runstream_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Compose services running the runstream image (those with a build section)."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def test_compose_variables_are_documented_in_env_example(env_example: dict[str, str]) -> None:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    refs = references_in(data)
    required = {name for name, op in refs if op in (":?", "?")}
    used = {name for name, _ in refs}
    assert set(STAND_IN_SECRETS) <= required, "secrets must be ${VAR:?}"
    assert not used - set(env_example), (
        f"undocumented in .env.example: {sorted(used - set(env_example))}"
    )
    assert not set(env_example) - used, f"unused in compose.yaml: {sorted(set(env_example) - used)}"
    shipped = read_env_file(ENV_EXAMPLE)
    for name in required:
        assert shipped[name] == "", f".env.example must not ship a value for the secret {name}"
        without = {k: v for k, v in env_example.items() if k != name}
        with pytest.raises(InterpolationError, match=name):
            interpolate(data, without)
        as_shipped = env_example | {name: shipped[name]}
        with pytest.raises(InterpolationError, match=name):
            interpolate(data, as_shipped)  # left as .env.example has it: compose refuses


def test_compose_env_file_stays_out_of_git() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", str(COMPOSE_DIR / ".env")], cwd=REPO, check=False
    )
    assert result.returncode == 0, "deploy/compose/.env (secrets) must be git-ignored"
    example = subprocess.run(
        ["git", "check-ignore", "--quiet", str(ENV_EXAMPLE)], cwd=REPO, check=False
    )
    assert example.returncode == 1, ".env.example must stay committed"


def test_compose_has_kafka_kraft_postgres_and_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = environment_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in str(kafka).lower()
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID: 16 bytes"
    # ingest uses transactions: with one broker the transaction log must accept one replica.
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "kafka-broker-api-versions" in " ".join(kafka["healthcheck"]["test"])
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    for svc in runstream_services(services).values():
        servers = environment_of(svc).get("RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS")
        if servers is not None:
            assert f"PLAINTEXT://{servers}" in advertised, f"{servers} is not advertised"

    postgres = services["postgres"]
    assert postgres["image"].split(":")[1].startswith("15")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    served = [served_service(svc.get("command", [])) for svc in services.values()]
    assert sorted(s for s in served if s) == SERVICES, "each service exactly once"


def test_compose_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    shots = one_shot(services)
    for name, svc in services.items():
        if name in shots:
            assert svc.get("restart", "no") == "no", f"one-shot {name} must not restart"
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        assert test != ["NONE"], f"{name} disables its healthcheck"
        if served_service(svc.get("command", [])):
            assert test[0] == "CMD", f"{name}: {test}"
            assert test[1:4] == HEALTH, f"{name}: {test}"
            heartbeat = environment_of(svc)["RUNSTREAM_HEARTBEAT_FILE"]
            assert test[4] == heartbeat, f"{name} probes {test[4]}, beats {heartbeat}"
            assert test[5:] == ["--max-age", "30", "--ready"], f"{name}: consuming, not just up"


def test_compose_depends_on_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    shots = one_shot(services)
    graph: dict[str, set[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions (long form)"
        graph[name] = set(deps)
        for target, dep in deps.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = dep.get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} has no healthcheck"
            elif condition == "service_completed_successfully":
                assert target in shots
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r}")
        if served_service(svc.get("command", [])):
            assert deps.get("kafka", {}).get("condition") == "service_healthy", name

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"dependency cycle: {' -> '.join((*stack, node))}"
        for nxt in graph[node]:
            visit(nxt, (*stack, node))

    for node in graph:
        visit(node, ())
    store = services["store"]["depends_on"]
    migrations = [n for n in shots if services[n].get("command") == ["db", "upgrade"]]
    assert migrations, "no one-shot `runstream db upgrade` service"
    assert any(
        store.get(m, {}).get("condition") == "service_completed_successfully" for m in migrations
    )
    for migrate in migrations:
        assert services[migrate]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_runstream_services_share_one_image(compose: dict[str, Any]) -> None:
    mine = runstream_services(compose["services"])
    assert {served_service(s.get("command", [])) for s in mine.values()} >= set(SERVICES)
    images = {(s["image"], s["build"]["context"], s["build"].get("dockerfile", "Dockerfile"))
              for s in mine.values()}  # fmt: skip
    assert len(images) == 1, images
    _, context, dockerfile = images.pop()
    assert (COMPOSE_DIR / context / dockerfile).resolve() == REPO / "Dockerfile"
    for name, svc in compose["services"].items():
        if name not in mine:
            assert "runstream" not in str(svc.get("image", "")), f"{name} uses another build"


def test_compose_executor_is_scalable(compose: dict[str, Any]) -> None:
    executor = next(s for s in compose["services"].values()
                    if served_service(s.get("command", [])) == "executor")  # fmt: skip
    for key in ("container_name", "hostname"):
        assert key not in executor, f"executor {key} would clash with --scale executor=2"
    for port in executor.get("ports", []):
        assert ":" not in str(port), f"a fixed host port {port} prevents scaling"
    env = environment_of(executor)
    assert "GROUP_ID" not in " ".join(env), "replicas must share the default consumer group"


def test_compose_shares_the_data_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = {}
    for name, svc in runstream_services(services).items():
        if not served_service(svc.get("command", [])):
            continue
        volumes = [v for v in svc.get("volumes", []) if isinstance(v, str)]
        named = [v.split(":") for v in volumes if v.split(":")[0] in (compose.get("volumes") or {})]
        assert named, f"{name} mounts no named volume"
        mounts[name] = {(v[0], v[1]) for v in named}
        env = environment_of(svc)
        root = env.get("XFEL_DATA_ROOT")
        assert root, f"{name} has no XFEL_DATA_ROOT"
        assert any(root.startswith(target) for _, target in mounts[name]), name
    shared = set.intersection(*mounts.values())
    assert shared, f"no volume shared by all services: {mounts}"


@pytest.mark.parametrize("service", SERVICES)
def test_compose_gives_each_service_its_settings(
    compose: dict[str, Any], service: str, known: frozenset[str]
) -> None:
    svc = next(s for s in compose["services"].values()
               if served_service(s.get("command", [])) == service)  # fmt: skip
    env = environment_of(svc)
    unknown = unknown_runstream_variables(env, known)
    assert not unknown, f"no service reads {unknown} (misspelt?)"
    load_settings(service, env)  # raises if a value does not parse
    for setting, names in needed_variables(service, env).items():
        assert names & set(env), f"compose gives {service} no {setting} ({sorted(names)})"


def test_compose_migration_gets_the_database(
    compose: dict[str, Any], known: frozenset[str]
) -> None:
    services = compose["services"]
    for name in one_shot(services):
        env = environment_of(services[name])
        unknown = unknown_runstream_variables(env, known)
        assert not unknown, f"no service reads {unknown} (misspelt?)"
        dsn = next(f for f in setting_fields("store") if f.path == ("postgres", "dsn"))
        assert dsn.env_names & set(env), f"{name} has no database DSN"
        assert (
            load_settings("store", env).postgres.dsn.get_secret_value().startswith("postgresql://")
        )


def install_tool(name: str) -> str:
    """``deploy/local/tools.sh NAME``: installs the tool once (cached), prints where it is."""
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "tools.sh"), name],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"deploy/local/tools.sh {name} failed:\n{done.stderr[-4000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def compose_command() -> tuple[list[str], dict[str, str]]:
    """``docker compose`` with the plugin from tools.sh (or ``$DOCKER_COMPOSE``), and its env."""
    if standalone := os.environ.get("DOCKER_COMPOSE"):
        return [standalone], {}
    config = Path(install_tool("compose"))
    docker = shutil.which("docker")
    if docker:  # the real CLI finds the plugin in $DOCKER_CONFIG/cli-plugins
        return [docker, "compose"], {"DOCKER_CONFIG": str(config)}
    return [str(config / "cli-plugins" / "docker-compose")], {}


@pytest.mark.integration
def test_docker_compose_config(compose: dict[str, Any], tmp_path: Path) -> None:
    """docker compose's own parser, schema and interpolation (installed by tools.sh).

    It must accept the file with .env.example and the secrets filled in, refuse it with
    .env.example as shipped (no secrets), and resolve every service as compose_lite does
    (so the checks above saw the truth)."""
    command, tool_env = compose_command()
    env_file = tmp_path / ".env"
    filled = "".join(f"{k}={v}\n" for k, v in STAND_IN_SECRETS.items())
    env_file.write_text(ENV_EXAMPLE.read_text(encoding="utf-8") + filled, encoding="utf-8")
    base = [*command, "--project-directory", str(COMPOSE_DIR), "-f", str(COMPOSE_FILE)]
    clean_env = {k: v for k, v in os.environ.items() if k not in read_env_file(ENV_EXAMPLE)}
    clean_env.update(tool_env)
    result = subprocess.run(
        [*base, "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True, text=True, check=False, env=clean_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    assert sorted(resolved) == sorted(compose["services"])
    for name, svc in compose["services"].items():
        assert (resolved[name].get("environment") or {}) == environment_of(svc), name
        assert resolved[name].get("command") == svc.get("command"), name
        assert resolved[name].get("image") == svc.get("image"), name
        deps = {k: v["condition"] for k, v in (resolved[name].get("depends_on") or {}).items()}
        assert deps == {k: v["condition"] for k, v in (svc.get("depends_on") or {}).items()}, name
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    for unset in (empty, ENV_EXAMPLE):
        refused = subprocess.run(
            [*base, "--env-file", str(unset), "config", "--quiet"],
            capture_output=True, text=True, check=False, env=clean_env,
        )  # fmt: skip
        assert refused.returncode != 0, f"compose must refuse to start with {unset.name}"
        # compose names the first missing secret it meets, in no fixed order
        assert any(secret in refused.stderr for secret in STAND_IN_SECRETS), refused.stderr


# ------------------------------------------------------------------ Kubernetes


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_every_k8s_file_is_referenced() -> None:
    used: set[Path] = set()
    for directory in KUSTOMIZATIONS.values():
        used |= referenced_files(directory)
    unused = [str(p.relative_to(REPO)) for p in K8S.rglob("*.yaml") if p.resolve() not in used]
    assert not unused, f"not referenced by any kustomization: {unused}"
    assert (K8S / "base" / "kustomization.yaml").resolve() in used


@pytest.mark.parametrize(
    "path", [p for p in k8s_files() if "base" in p.parts], ids=lambda p: p.name
)
def test_base_documents_validate_against_kubernetes_schemas(path: Path) -> None:
    docs = load_documents(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_k8s(doc, str(path.relative_to(REPO)))


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_rendered_kustomization_validates(name: str) -> None:
    resources = rendered(name)
    kinds = {r["kind"] for r in resources}
    assert {"Namespace", "ConfigMap", "Deployment", "Job", "HorizontalPodAutoscaler",
            "PersistentVolumeClaim"} <= kinds, kinds  # fmt: skip
    for resource in resources:
        validate_k8s(resource, f"kustomize build {name}")


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_patches_target_the_base_and_are_applied(name: str) -> None:
    overlay = KUSTOMIZATIONS[name]
    kustomization = load_documents(overlay / "kustomization.yaml")[0]
    assert kustomization["resources"][0] == "../../base"
    base_ids = {(r["kind"], r["metadata"]["name"]) for r in rendered("base")}
    output = rendered(name)
    index = {(r["kind"], r["metadata"]["name"]): r for r in output}
    assert kustomization.get("patches"), f"{name} patches nothing"
    for entry in kustomization["patches"]:
        patch = load_documents(overlay / entry["path"])[0]
        key = (patch["kind"], patch["metadata"]["name"])
        assert key in base_ids, f"{entry['path']}: {key} is not in the base"
        if patch.get("$patch") == "delete":
            assert key not in index, f"{entry['path']}: {key} still rendered"
        else:
            missing = patch_in(index[key], patch)
            assert not missing, f"{entry['path']} not applied: {missing}"
    for entry in kustomization.get("replicas", []):
        assert by_kind(output, "Deployment")[entry["name"]]["spec"]["replicas"] == entry["count"]
    for entry in kustomization.get("images", []):
        expected = f"{entry.get('newName', entry['name'])}:{entry['newTag']}"
        images = {c["image"] for r in output for c in containers(r)}
        assert images == {expected}, images


def test_kustomize_lite_refuses_what_kustomize_refuses(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("kind: Kustomization\nresources: [cm.yaml]\n")
    (base / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: '1'}\n"
    )
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "p.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {x: '2'}\n"
    )
    (overlay / "kustomization.yaml").write_text(
        "kind: Kustomization\nresources: [../base]\npatches: [{path: p.yaml}]\n"
    )
    with pytest.raises(KustomizeError, match="no resource"):
        build(overlay)
    (overlay / "kustomization.yaml").write_text(
        "kind: Kustomization\nresources: [../base, gone.yaml]\n"
    )
    with pytest.raises(KustomizeError, match="does not exist"):
        build(overlay)
    (overlay / "kustomization.yaml").write_text(
        "kind: Kustomization\nresources: [../base]\nconfigMapGenerator: []\n"
    )
    with pytest.raises(KustomizeError, match="not supported"):
        build(overlay)
    (overlay / "p.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {y: '2'}\n"
    )
    (overlay / "kustomization.yaml").write_text(
        "kind: Kustomization\nresources: [../base]\npatches: [{path: p.yaml}]\n"
    )
    assert build(overlay)[0]["data"] == {"x": "1", "y": "2"}


def test_strategic_merge_merges_named_lists() -> None:
    base: dict[str, Any] = {"containers": [{"name": "a", "image": "i", "env": [{"name": "X", "value": "1"}]},
                           {"name": "b", "image": "j"}], "args": ["x", "y"]}  # fmt: skip
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}], "args": ["z"]}
    merged = strategic_merge(base, patch)
    # kustomize (and Kubernetes) put the patch's new items first (checked against the real
    # kustomize by test_kustomize_lite_matches_kustomize: the production overlay adds env)
    assert merged["containers"][0] == {"name": "a", "image": "i",
        "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}]}  # fmt: skip
    assert merged["containers"][1] == {"name": "b", "image": "j"}
    assert merged["args"] == ["z"], "lists without a merge key are replaced"
    assert base["containers"][0]["env"] == [{"name": "X", "value": "1"}], "base unchanged"
    assert strategic_merge({"a": 1, "b": 2}, {"a": None}) == {"b": 2}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_deployments_run_each_service_with_probes_and_resources(name: str) -> None:
    resources = rendered(name)
    heartbeat = configmap(resources)["RUNSTREAM_HEARTBEAT_FILE"]
    pvcs = by_kind(resources, "PersistentVolumeClaim")
    served: list[str] = []
    for deployment in by_kind(resources, "Deployment").values():
        pod = pod_specs(deployment)[0]
        (container,) = pod["containers"]
        service = served_service(container.get("args", []))
        assert service in SERVICES, f"{deployment['metadata']['name']}: {container.get('args')}"
        served.append(service)
        for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
            if service == "web" and probe == "readinessProbe":
                # browsers are sent to it once it answers and its database does
                assert container[probe]["httpGet"]["path"] == "/api/health"
                continue
            command = container[probe]["exec"]["command"]
            assert command[:3] == HEALTH, f"{service} {probe}: {command}"
            assert command[3] == heartbeat, f"{service} {probe}: {command}"
            ready = ["--ready"] if probe == "readinessProbe" else []
            assert command[4:] == ["--max-age", "30", *ready], f"{service} {probe}: {command}"
            # the probe imports the CLI: give it time
            assert container[probe]["timeoutSeconds"] >= 10
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        for res in ("cpu", "memory"):
            assert quantity(requests[res]) <= quantity(limits[res]), f"{service} {res}"
        assert pod["securityContext"]["runAsNonRoot"] is True
        claims = {v["persistentVolumeClaim"]["claimName"]: v["name"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
        assert "runstream-data" in claims, service
        assert "runstream-data" in pvcs, service
        mount = next(
            m["mountPath"]
            for m in container["volumeMounts"]
            if m["name"] == claims["runstream-data"]
        )
        assert container_env(resources, container)["XFEL_DATA_ROOT"].startswith(mount)
        if container["securityContext"].get("readOnlyRootFilesystem"):
            writable = {m["mountPath"] for m in container["volumeMounts"]}
            assert str(Path(heartbeat).parent) in writable, "heartbeat dir must be writable"
    assert sorted(served) == SERVICES
    assert "ReadWriteMany" in pvcs["runstream-data"]["spec"]["accessModes"], "executors share it"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
@pytest.mark.parametrize("service", SERVICES)
def test_k8s_gives_each_service_its_settings(
    name: str, service: str, known: frozenset[str]
) -> None:
    resources = rendered(name)
    deployment = next(d for d in by_kind(resources, "Deployment").values()
                      if served_service(pod_specs(d)[0]["containers"][0]["args"]) == service)  # fmt: skip
    container = pod_specs(deployment)[0]["containers"][0]
    env = container_env(resources, container)
    unknown = unknown_runstream_variables(env, known)
    assert not unknown, f"no service reads {unknown} (misspelt?)"
    load_settings(service, env)
    secret_env = {e["name"] for e in container.get("env", []) if "valueFrom" in e}
    for setting, names in needed_variables(service, env).items():
        assert names & set(env), f"{name}: {service} gets no {setting} ({sorted(names)})"
        field = next(f for f in setting_fields(service) if f.dotted == setting)
        if field.secret:
            assert names & secret_env, f"{name}: {service} {setting} must come from a Secret"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_gateway_journal_survives_the_pod(name: str) -> None:
    resources = rendered(name)
    deployment = next(d for d in by_kind(resources, "Deployment").values()
                      if served_service(pod_specs(d)[0]["containers"][0]["args"]) == "slurm-gateway")  # fmt: skip
    pod = pod_specs(deployment)[0]
    container = pod["containers"][0]
    journal = load_settings("slurm-gateway", container_env(resources, container)).local.journal_dir
    assert journal, "the local backend must journal its jobs"
    persistent = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in persistent]
    assert any(Path(journal).is_relative_to(m) for m in mounts), f"{journal} is lost with the pod"


def test_compose_gateway_journal_survives_the_container(compose: dict[str, Any]) -> None:
    svc = next(s for s in compose["services"].values()
               if served_service(s.get("command", [])) == "slurm-gateway")  # fmt: skip
    journal = load_settings("slurm-gateway", environment_of(svc)).local.journal_dir
    assert journal, "the local backend must journal its jobs"
    named = [
        v.split(":")[1] for v in svc.get("volumes", []) if v.split(":")[0] in compose["volumes"]
    ]
    assert any(Path(journal).is_relative_to(m) for m in named), (
        f"{journal} is lost with the container"
    )


def test_every_optional_secret_has_a_rule() -> None:
    optional = {f.path for s in SERVICES for f in setting_fields(s) if f.secret and f.optional}
    assert optional == set(CONDITIONAL_SECRETS), "update CONDITIONAL_SECRETS in settings_env.py"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_secrets_stay_out_of_the_configmap(name: str) -> None:
    secret_names = {n for s in SERVICES for f in setting_fields(s) if f.secret for n in f.env_names}
    leaked = secret_names & set(configmap(rendered(name)))
    assert not leaked, f"secret settings in the ConfigMap: {leaked}"


def secret_references(resources: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    """(Secret, key) of every secretKeyRef, (Secret, None) of every secret volume."""
    refs: set[tuple[str, str | None]] = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for r in resources for c in containers(r) for e in c.get("env", []) if "valueFrom" in e
    }  # fmt: skip
    for resource in resources:
        for pod in pod_specs(resource):
            refs |= {
                (v["secret"]["secretName"], None) for v in pod.get("volumes", []) if "secret" in v
            }
    return refs


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_secret_references_resolve(name: str) -> None:
    resources = rendered(name)
    secrets = by_kind(resources, "Secret")
    refs = secret_references(resources)
    assert refs, "no Secret is referenced"
    if name == "production":
        # Every Secret is generated from a file kept out of git, none from a placeholder.
        for secret_name, key in refs:
            assert secret_name in secrets, f"{secret_name} is not generated"
            assert key is None or key in secrets[secret_name]["data"], f"{secret_name}/{key}"
        return
    assert not secrets, f"{name} must render no Secret (not even a placeholder): {list(secrets)}"
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8").replace("\\\n", " ")  # join continued lines
    for secret_name, key in refs:
        # created with kubectl, as docs/deployment.md says
        pattern = rf"kubectl[^\n]*create secret generic {re.escape(secret_name)}\b[^\n]*{re.escape(key or '')}="
        assert re.search(pattern, doc), f"docs/deployment.md does not create {secret_name}/{key}"


def test_production_refuses_to_render_without_its_secret_files() -> None:
    production = KUSTOMIZATIONS["production"]
    files = generator_files(production)
    assert {f.name for f in files} >= {"postgres-dsn", "slurm-jwt-key", "kafka-ca.crt"}
    for relative in files:  # kept out of git
        path = production / relative
        ignored = subprocess.run(
            ["git", "check-ignore", "--quiet", str(path)], cwd=REPO, check=False
        )
        assert ignored.returncode == 0, f"{relative} must be git-ignored"
    if not all((production / f).exists() for f in files):  # a checkout without secrets
        with pytest.raises(KustomizeError, match="does not exist"):
            build(production)
    # with all but one file it still refuses, naming the missing one
    for missing in files:
        partial = Path(tempfile.mkdtemp(prefix="rs-k8s-partial-"))
        try:
            shutil.copytree(k8s_with_secrets(), partial / "k8s")
            (partial / "k8s" / "overlays" / "production" / missing).unlink()
            with pytest.raises(KustomizeError, match=re.escape(str(missing))):
                build(partial / "k8s" / "overlays" / "production")
        finally:
            shutil.rmtree(partial)


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_executor_scales_and_fits(name: str) -> None:
    resources = rendered(name)
    config = configmap(resources)
    deployments = {served_service(pod_specs(d)[0]["containers"][0]["args"]): d
                   for d in by_kind(resources, "Deployment").values()}  # fmt: skip
    executor = deployments["executor"]
    (hpa,) = by_kind(resources, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": executor["metadata"]["name"]}  # fmt: skip
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 1 <= low <= executor["spec"]["replicas"] <= high
    settings = load_settings(
        "executor", container_env(resources, executor["spec"]["template"]["spec"]["containers"][0])
    )
    assert high <= settings.kafka.topic_partitions, "more executors than partitions would idle"
    container = executor["spec"]["template"]["spec"]["containers"][0]
    limit_mib = quantity(container["resources"]["limits"]["memory"]) / 2**20
    assert settings.workers * settings.variable_memory_mb <= limit_mib, (
        "workers exceed the pod limit"
    )
    assert "RUNSTREAM_EXECUTOR_GROUP_ID" not in config
    for service, deployment in deployments.items():
        if service != "executor":
            assert deployment["spec"]["replicas"] == 1, f"{service} runs as a single instance"
            assert deployment["spec"]["strategy"]["type"] == "Recreate", service


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_migration_job(name: str, known: frozenset[str]) -> None:
    resources = rendered(name)
    (job,) = [j for j in by_kind(resources, "Job").values()
              if pod_specs(j)[0]["containers"][0]["args"] == ["db", "upgrade"]]  # fmt: skip
    pod = pod_specs(job)[0]
    (container,) = pod["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    env = container_env(resources, container)
    unknown = unknown_runstream_variables(env, known)
    assert not unknown, f"no service reads {unknown} (misspelt?)"
    dsn = next(f for f in setting_fields("store") if f.path == ("postgres", "dsn"))
    secret_env = {e["name"] for e in container.get("env", []) if "valueFrom" in e}
    assert dsn.env_names & secret_env, "the migration needs the DSN from the Secret"
    images = {c["image"] for r in resources for c in containers(r)}
    assert images == {container["image"]}, "one image for the services and the Jobs"


def test_namespace_is_consistent() -> None:
    base = load_documents(KUSTOMIZATIONS["base"] / "kustomization.yaml")[0]
    for name in KUSTOMIZATIONS:
        resources = rendered(name)
        (namespace,) = by_kind(resources, "Namespace")
        assert namespace == base["namespace"]
        assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {
            namespace
        }


@pytest.mark.integration
def test_kustomize_lite_matches_kustomize() -> None:
    """The real kustomize ($KUSTOMIZE, else built by tools.sh) renders exactly what ours does."""
    binary = os.environ.get("KUSTOMIZE") or install_tool("kustomize")
    for name in KUSTOMIZATIONS:
        directory = renderable(name)
        result = subprocess.run(
            [binary, "build", str(directory)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"kustomize build {name}: {result.stderr}"
        real = {
            (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d
        }
        lite = {(r["kind"], r["metadata"]["name"]): r for r in rendered(name)}
        assert real == lite, f"{name}: kustomize-lite renders differently from kustomize"
