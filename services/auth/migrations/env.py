"""Alembic environment of the auth service (driven by chatplane.common.db.migrate)."""

from chatplane.auth.models import Base
from chatplane.common.db import run_alembic_env

run_alembic_env(Base.metadata, version_table="alembic_version_auth")
