from app.db.models.agent_transcript import AgentTranscriptEntry
from app.db.models.api_key import ApiKey
from app.db.models.cache_invalidation import CacheInvalidation
from app.db.models.session import AgentSession
from app.db.models.session_event import SessionEvent
from app.db.models.transcript import TranscriptEntry

__all__ = ("AgentSession", "AgentTranscriptEntry", "ApiKey", "CacheInvalidation", "SessionEvent", "TranscriptEntry")
