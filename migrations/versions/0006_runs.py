"""runs as resources: the agent_run table (with a per-session queue), queued_runs on sessions, and the
durable Idempotency-Key records

Revision ID: 0006_runs
Revises: 0005_cache_invalidations
Create Date: 2026-12-01 10:20:00

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from advanced_alchemy.types import GUID, DateTimeUTC

__all__ = ("downgrade", "upgrade")

revision = "0006_runs"
down_revision = "0005_cache_invalidations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE IF NOT EXISTS agent_run_queue_seq")
    op.create_table(
        "agent_run",
        sa.Column("id", GUID(length=16), nullable=False),
        sa.Column("session_id", GUID(length=16), nullable=False),
        sa.Column("owner_key_id", GUID(length=16), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("if_busy", sa.String(length=20), nullable=False),
        sa.Column("queue_rank", sa.SmallInteger(), nullable=False),
        sa.Column(
            "queue_seq", sa.BigInteger(), server_default=sa.text("nextval('agent_run_queue_seq')"), nullable=False
        ),
        sa.Column("started_at", DateTimeUTC(timezone=True), nullable=True),
        sa.Column("ended_at", DateTimeUTC(timezone=True), nullable=True),
        sa.Column("instance_id", sa.String(length=200), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("deleted_at", DateTimeUTC(timezone=True), nullable=True),
        sa.Column("sa_orm_sentinel", sa.Integer(), nullable=True),
        sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_run")),
    )
    op.create_index("ix_agent_run_session_created", "agent_run", ["session_id", "created_at"])
    op.create_index(
        "ix_agent_run_queue",
        "agent_run",
        ["session_id", "queue_rank", "queue_seq"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.add_column("agent_session", sa.Column("queued_runs", sa.Integer(), server_default="0", nullable=False))
    op.create_index(
        "ix_agent_session_in_flight",
        "agent_session",
        ["id"],
        postgresql_where=sa.text("active_run_id IS NOT NULL OR queued_runs > 0"),
    )
    # Runs that happened before this table existed: one row per run seen in the durable events, its status
    # from its `done` (their prompts were never stored).
    op.execute(
        """
        INSERT INTO agent_run (id, session_id, owner_key_id, status, input, if_busy, queue_rank, started_at,
                               ended_at, instance_id, result, error, created_at, updated_at)
        SELECT e.run_id, e.session_id, s.owner_key_id,
               CASE WHEN s.active_run_id = e.run_id THEN 'running'
                    ELSE coalesce((SELECT d.data->>'reason' FROM session_event d
                                   WHERE d.session_id = e.session_id AND d.run_id = e.run_id AND d.event = 'done'
                                   LIMIT 1), 'error') END,
               '{}'::jsonb, 'reject', 1, min(e.created_at),
               CASE WHEN s.active_run_id = e.run_id THEN NULL ELSE max(e.created_at) END,
               NULL,
               (SELECT r.data FROM session_event r
                 WHERE r.session_id = e.session_id AND r.run_id = e.run_id AND r.event = 'result' LIMIT 1),
               (SELECT r.data FROM session_event r
                 WHERE r.session_id = e.session_id AND r.run_id = e.run_id AND r.event = 'error' LIMIT 1),
               min(e.created_at), max(e.created_at)
        FROM session_event e JOIN agent_session s ON s.id = e.session_id
        GROUP BY e.run_id, e.session_id, s.owner_key_id, s.active_run_id
        ON CONFLICT (id) DO NOTHING
        """
    )
    op.create_table(
        "idempotency_record",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("owner_key_id", GUID(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("expires_at", DateTimeUTC(timezone=True), nullable=False),
        sa.Column("created_at", DateTimeUTC(timezone=True), nullable=False),
        sa.Column("updated_at", DateTimeUTC(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_record")),
    )
    op.create_index("ux_idempotency_owner_key", "idempotency_record", ["owner_key_id", "key"], unique=True)
    op.create_index("ix_idempotency_expires", "idempotency_record", ["expires_at"])


def downgrade() -> None:
    op.drop_table("idempotency_record")
    op.drop_index("ix_agent_session_in_flight", table_name="agent_session")
    op.drop_column("agent_session", "queued_runs")
    op.drop_table("agent_run")
    op.execute("DROP SEQUENCE IF EXISTS agent_run_queue_seq")
