"""Procfile, docker-compose.yml and Dockerfile agree with the code: the commands they name exist."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from gunicorn.config import Config as GunicornConfig

from cli.main import main as taskexec

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = {"release", "web", "worker", "sweeper", "deliverer", "flower"}
#: Procfile process -> compose service, where the names differ.
COMPOSE_NAME = {"web": "api", "release": "migrate"}
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, command = line.partition(":")
            assert sep and command.strip(), f"not a Procfile line: {line!r}"
            assert name not in entries, f"{name} twice"
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def argv(command: str | list[str]) -> list[str]:
    """A command as the process sees it: ${VAR:-default} takes its default."""
    if isinstance(command, list):
        return [str(part) for part in command]
    return shlex.split(_DEFAULTED.sub(lambda m: m.group(2), command))


def check_command(args: list[str]) -> None:
    """Fail unless the program exists and accepts these arguments (nothing is run)."""
    program = args[0]
    if program == "taskexec":
        command = taskexec.commands.get(args[1])
        assert command is not None, f"taskexec has no {args[1]!r} command"
        try:
            command.make_context(args[1], args[2:])  # parses options, runs nothing
        except click.ClickException as exc:
            raise AssertionError(f"{' '.join(args)}: {exc.format_message()}") from exc
    elif program == "gunicorn":
        parsed = GunicornConfig().parser().parse_args(args[1:])
        assert parsed.config and (ROOT / parsed.config).is_file(), parsed.config
        (app,) = parsed.args
        assert app == "api.wsgi:app", app
    else:
        raise AssertionError(f"unexpected program {program!r}")


# ------------------------------------------------------------------ Procfile


def test_procfile_names_the_six_processes():
    assert set(procfile()) == PROCESSES


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_each_procfile_command_exists_and_accepts_its_arguments(name):
    check_command(argv(procfile()[name]))


def test_web_is_gunicorn_with_the_config_file_and_release_migrates():
    entries = procfile()
    assert argv(entries["web"])[:3] == ["gunicorn", "-c", "config/gunicorn.py"]
    assert argv(entries["release"]) == ["taskexec", "migrate"]


def test_flower_is_exposed_only_with_authentication():
    args = argv(procfile()["flower"])
    assert args[args.index("--address") + 1] == "0.0.0.0"
    # The command itself refuses that address without TASKEXEC_FLOWER_BASIC_AUTH.
    from cli.processes import flower_command

    with pytest.raises(ValueError):
        flower_command(5555, None, "0.0.0.0")


def test_the_entry_points_import(tmp_path):
    """`api.wsgi:app` and the `celery -A` target import with only the required variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKEXEC_", "PROMETHEUS"))}
    env.update(
        DATABASE_URL="postgresql://nobody@127.0.0.1:9/none",
        REDIS_URL="redis://127.0.0.1:9/0",
        PYTHONPATH=str(ROOT),
    )
    code = (
        "import api.wsgi, flask, workers.celery_app as w, celery\n"
        "assert isinstance(api.wsgi.app, flask.Flask)\n"
        "assert isinstance(w.app, celery.Celery)\n"
        "print(sorted(r.rule for r in api.wsgi.app.url_map.iter_rules()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "/readyz" in result.stdout and "/metrics" in result.stdout


# ------------------------------------------------------------------ docker-compose.yml


def test_compose_runs_every_procfile_process_with_the_same_command():
    services = compose()["services"]
    for name, command in procfile().items():
        service = services.get(COMPOSE_NAME.get(name, name))
        assert service is not None, f"compose has no service for the Procfile's {name}"
        ours, theirs = argv(command), argv(service["command"])
        if ours[0] == "gunicorn":
            assert theirs == ours
        else:
            assert theirs[:2] == ours[:2], (name, theirs)
        check_command(theirs)


def test_compose_has_the_backing_services_with_persistence_and_a_password():
    doc = compose()
    services = doc["services"]
    assert {"api", "worker", "sweeper", "flower", "redis", "postgres", "migrate"} <= set(services)
    redis = argv(services["redis"]["command"])
    assert redis[0] == "redis-server"
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"  # never drop a message
    volumes = services["postgres"]["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in volumes)
    assert volumes[0].split(":")[0] in doc["volumes"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )


def test_every_app_service_builds_the_image_reads_dotenv_and_gets_the_urls():
    services = compose()["services"]
    for name in ("api", "worker", "sweeper", "flower", "migrate"):
        service = services[name]
        assert service["build"] == "." and service["env_file"] == ".env", name
        environment = service["environment"]
        assert "@postgres:5432/" in environment["DATABASE_URL"], name
        assert "@redis:6379/" in environment["REDIS_URL"], name
    for name in ("api", "worker", "sweeper"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_healthchecks_probe_what_the_code_serves():
    services = compose()["services"]
    for name in ("api", "worker", "flower", "redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    worker = services["worker"]
    name = argv(worker["command"])[argv(worker["command"]).index("--name") + 1]
    assert name == "worker@%h"
    assert "-d worker@$$HOSTNAME" in " ".join(worker["healthcheck"]["test"])


def test_flower_in_compose_cannot_start_without_credentials():
    flower = compose()["services"]["flower"]
    assert flower["environment"]["TASKEXEC_FLOWER_BASIC_AUTH"].startswith(
        "${TASKEXEC_FLOWER_BASIC_AUTH:?"
    )


def test_api_metrics_use_a_fresh_multiprocess_directory():
    api = compose()["services"]["api"]
    directory = api["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert directory in api["tmpfs"]


# ------------------------------------------------------------------ Dockerfile and Flower's config


def test_dockerfile_copies_every_package_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = {p.split(".")[0] for p in setup["options.packages.find"]["include"].split()}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert packages <= copied, packages - copied
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert yaml.safe_load(cmd) == argv(procfile()["web"])


def test_flower_config_sets_only_flower_options():
    from flower.options import options

    values: dict[str, Any] = {}
    exec((ROOT / "config" / "flower.py").read_text(), values)  # as Flower reads it
    names = {k for k in values if not k.startswith("_")}
    known = {name.replace("-", "_") for name in options._options}  # tornado's spelling
    assert names and names <= known, names - known
    assert values["read_only"] is True
    assert "basic_auth" not in names  # credentials come from the environment only
