"""Alembic environment of the conversation service (run by ``chatplane.common.db.migrate``)."""

from chatplane.common.db import run_alembic_env
from chatplane.conversation.models import Base

run_alembic_env(Base.metadata, version_table="alembic_version_conversation")
