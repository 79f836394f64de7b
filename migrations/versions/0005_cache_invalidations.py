"""cache_invalidation: sessions whose cache entry a write could not update (Valkey unreachable from its instance)

Revision ID: 0005_cache_invalidations
Revises: 0004
Create Date: 2026-12-01 10:45:00

"""

import sqlalchemy as sa
from advanced_alchemy.types import GUID, DateTimeUTC
from alembic import op

__all__ = ("downgrade", "upgrade")

revision = "0005_cache_invalidations"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_invalidation",
        sa.Column("session_id", GUID(length=16), nullable=False),
        sa.Column("created_at", DateTimeUTC(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_cache_invalidation")),
    )
    op.create_index(op.f("ix_cache_invalidation_created_at"), "cache_invalidation", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_cache_invalidation_created_at"), table_name="cache_invalidation")
    op.drop_table("cache_invalidation")
