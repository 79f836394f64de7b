"""api keys: a fingerprint of the hash instead of the key's first characters

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 11:15:00

"""

from alembic import op

__all__ = ("downgrade", "upgrade")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The old `prefix` held the key's first 12 characters: all of a short bootstrap API_KEY, in plaintext.
    op.alter_column("api_key", "prefix", new_column_name="fingerprint")
    op.execute("UPDATE api_key SET fingerprint = left(key_hash, 12)")


def downgrade() -> None:
    # The plaintext prefixes cannot be recovered; the fingerprints stay as the values.
    op.alter_column("api_key", "fingerprint", new_column_name="prefix")
