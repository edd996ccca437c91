"""DatabaseServiceSettings: SQLite in data_dir by default, refused in production with the service's variable named."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from chatplane.common.settings import DatabaseServiceSettings


class ExampleSettings(DatabaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHATPLANE_EXAMPLE_")
    database_file: ClassVar[str] = "example.db"


def test_sqlite_file_in_data_dir_by_default(tmp_path):
    settings = ExampleSettings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path}/example.db"
    assert settings.auto_migrate is True


def test_url_and_auto_migrate_come_from_the_service_prefix(monkeypatch):
    monkeypatch.setenv("CHATPLANE_EXAMPLE_DATABASE_URL", "postgresql+asyncpg://u@db/example")
    monkeypatch.setenv("CHATPLANE_EXAMPLE_AUTO_MIGRATE", "false")
    settings = ExampleSettings()
    assert (settings.database_url, settings.auto_migrate) == ("postgresql+asyncpg://u@db/example", False)


@pytest.mark.parametrize("url", ["", "sqlite+aiosqlite:///data/example.db"])
def test_production_refuses_sqlite_and_names_the_variable(url):
    with pytest.raises(ValidationError, match="CHATPLANE_EXAMPLE_DATABASE_URL") as info:
        ExampleSettings(environment="production", database_url=url)
    assert "SQLite" in str(info.value)


class StrictExampleSettings(ExampleSettings):
    """A service with a rule of its own that fails: its error must not echo the database URL either."""

    @model_validator(mode="after")
    def _always_fails(self) -> StrictExampleSettings:
        raise ValueError("a rule of the service failed")


def test_production_accepts_postgresql_and_errors_never_echo_the_url():
    url = "postgresql+asyncpg://u:s3cret@db/e"
    assert ExampleSettings(environment="production", database_url=url).database_url == url
    with pytest.raises(ValidationError, match="a rule of the service failed") as info:
        StrictExampleSettings(database_url=url)
    assert "s3cret" not in str(info.value)
