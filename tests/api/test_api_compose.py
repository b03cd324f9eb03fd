"""The API in docker-compose.yml: served on its published port after init, with
the two database roles it needs, whose passwords its URLs carry."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tokenhub.api.settings import READER_ROLE, WRITER_ROLE, ApiSettings
from tokenhub.infra.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_api_runs_after_init_with_settings_it_knows() -> None:
    api = COMPOSE["services"]["api"]
    assert api["command"] == ["api", "serve"] and api["image"] == COMPOSE["services"]["init"]["image"]
    assert api["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    environment = {name: str(value) for name, value in api["environment"].items()}
    prefix = f"{ENV_PREFIX}API_"
    api_fields = {name[len(prefix):].lower(): value for name, value in environment.items() if name.startswith(prefix)}
    stack_fields = {name[len(ENV_PREFIX):].lower(): value for name, value in environment.items()
                    if name.startswith(ENV_PREFIX) and not name.startswith(prefix)}
    assert not set(api_fields) - set(ApiSettings.model_fields) and not set(stack_fields) - set(Settings.model_fields)
    settings = ApiSettings(**api_fields)
    assert f"{settings.port}:{settings.port}" in api["ports"] and settings.host == "0.0.0.0"


def test_the_roles_the_api_connects_as_are_made_with_the_passwords_its_urls_carry() -> None:
    script = COMPOSE["configs"]["api-roles"]["content"]
    passwords = dict(re.findall(r"create role (\w+) login password '([^']+)'", script))
    environment = COMPOSE["services"]["api"]["environment"]
    for role, variable in ((READER_ROLE, "TOKENHUB_API_READER_URL"), (WRITER_ROLE, "TOKENHUB_API_WRITER_URL")):
        url = urlsplit(environment[variable])
        assert (url.username, url.password, url.hostname) == (role, passwords[role], "postgres")
    mounted = COMPOSE["services"]["postgres"]["configs"]
    assert mounted == [{"source": "api-roles", "target": "/docker-entrypoint-initdb.d/10-api-roles.sql"}]
    migration = (ROOT / "infra" / "migrations" / "0030_api.sql").read_text()
    assert f"if not exists (select from pg_roles where rolname = '{READER_ROLE}')" in migration
