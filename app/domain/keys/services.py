from __future__ import annotations

from datetime import UTC, datetime

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import select

from app.db.models import ApiKey
from app.domain.keys.hashing import fingerprint, generate_key, hash_key

BOOTSTRAP_KEY_NAME = "bootstrap"


class ApiKeyService(SQLAlchemyAsyncRepositoryService[ApiKey]):
    class Repository(SQLAlchemyAsyncRepository[ApiKey]):
        model_type = ApiKey

    repository_type = Repository

    async def create_key(self, name: str) -> tuple[ApiKey, str]:
        """Returns the new row and the plaintext key, which is shown once and never stored."""
        plaintext = generate_key()
        digest = hash_key(plaintext)
        row = await self.create(ApiKey(name=name, key_hash=digest, fingerprint=fingerprint(digest)), auto_commit=True)
        return row, plaintext

    async def find_active_by_hash(self, key_hash: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        row: ApiKey | None = (await self.repository.session.execute(stmt)).scalar_one_or_none()
        return row

    async def revoke(self, name: str) -> bool:
        row = await self.get_one_or_none(name=name)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = datetime.now(UTC)
        await self.repository.session.commit()
        return True

    async def ensure_bootstrap(self, plaintext: str) -> ApiKey:
        """Keeps one row for the `API_KEY` setting (sessions need an owner row); compared by hash."""
        key_hash = hash_key(plaintext)
        row = await self.get_one_or_none(name=BOOTSTRAP_KEY_NAME)
        if row is None:
            row = await self.create(
                ApiKey(name=BOOTSTRAP_KEY_NAME, key_hash=key_hash, fingerprint=fingerprint(key_hash)), auto_commit=True
            )
        elif row.key_hash != key_hash or row.revoked_at is not None:
            row.key_hash, row.fingerprint, row.revoked_at = key_hash, fingerprint(key_hash), None
            await self.repository.session.commit()
        return row
