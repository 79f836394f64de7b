from app.db.models.agent_transcript import AgentTranscriptEntry
from app.db.models.api_key import ApiKey
from app.db.models.cache_invalidation import CacheInvalidation
from app.db.models.idempotency import IdempotencyRecord
from app.db.models.run import AgentRun
from app.db.models.session import AgentSession
from app.db.models.session_event import SessionEvent
from app.db.models.transcript import TranscriptEntry
from app.db.models.webhook import WebhookDelivery, WebhookEndpoint

__all__ = (
    "AgentRun",
    "AgentSession",
    "AgentTranscriptEntry",
    "ApiKey",
    "CacheInvalidation",
    "IdempotencyRecord",
    "SessionEvent",
    "TranscriptEntry",
    "WebhookDelivery",
    "WebhookEndpoint",
)
