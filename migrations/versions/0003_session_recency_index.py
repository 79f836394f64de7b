"""index on a session's recency (last run, else last update) for startup cache warming

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:30:00

"""

from alembic import op

__all__ = ("downgrade", "upgrade")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Cache warming reads the N most recent sessions by this expression: without the index that is a full scan
    # and sort of agent_session on every instance start.
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_agent_session_recency "
        "ON agent_session ((coalesce(last_run_at, updated_at)) DESC, id DESC)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_agent_session_recency")
