"""agent transcripts keyed like the Claude SDK's SessionStore; forks remember what to fork from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:50:00

"""

import warnings

import sqlalchemy as sa
from alembic import op
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy.dialects import postgresql

__all__ = ("downgrade", "upgrade")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        op.create_table(
            "agent_transcript_entry",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("project_key", sa.String(length=300), nullable=False),
            sa.Column("session_id", sa.String(length=200), nullable=False),
            sa.Column("subpath", sa.String(length=500), nullable=False),
            sa.Column("uuid", sa.String(length=200), nullable=True),
            sa.Column("entry", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
            sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
            sa.Column("updated_at", DateTimeUTC(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_transcript_entry")),
        )
        op.create_index(
            "ix_agent_transcript_entry_key",
            "agent_transcript_entry",
            ["project_key", "session_id", "subpath", "id"],
            unique=False,
        )
        op.create_index(
            "ux_agent_transcript_entry_uuid",
            "agent_transcript_entry",
            ["project_key", "session_id", "subpath", "uuid"],
            unique=True,
            postgresql_where=sa.text("uuid IS NOT NULL"),
        )
        op.add_column("agent_session", sa.Column("agent_fork_from", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        op.drop_column("agent_session", "agent_fork_from")
        op.drop_index("ux_agent_transcript_entry_uuid", table_name="agent_transcript_entry")
        op.drop_index("ix_agent_transcript_entry_key", table_name="agent_transcript_entry")
        op.drop_table("agent_transcript_entry")
