"""The Responses API: tool calls and tool results in a conversation, and system messages from its input.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite changes a CHECK constraint by copying the table; PostgreSQL alters it in place.
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.add_column(sa.Column("tool_calls", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("tool_call_id", sa.String(256), server_default="", nullable=False))
        batch.drop_constraint("ck_messages_role", type_="check")
        batch.create_check_constraint("ck_messages_role", "role IN ('user', 'assistant', 'system', 'tool')")


def downgrade() -> None:
    op.execute("DELETE FROM messages WHERE role IN ('system', 'tool')")
    with op.batch_alter_table("messages", recreate="auto") as batch:
        batch.drop_constraint("ck_messages_role", type_="check")
        batch.create_check_constraint("ck_messages_role", "role IN ('user', 'assistant')")
        batch.drop_column("tool_call_id")
        batch.drop_column("tool_calls")
