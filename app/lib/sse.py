"""Server-Sent Events framing. Frames are built here and written in batches: one write per batch of
stream entries instead of one per event, which is what lets a burst flow at Valkey's pace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

PING_FRAME = b": ping\n\n"


class SSEFrame(NamedTuple):
    # A tuple, not a frozen dataclass: one is built per event streamed, and a frozen dataclass's __init__ costs
    # three times as much.
    id: str
    event: str
    data: bytes

    def encode(self) -> bytes:
        # JSON data never contains a newline (compact encoding), so one `data:` line is exact.
        return b"id: " + self.id.encode() + b"\nevent: " + self.event.encode() + b"\ndata: " + self.data + b"\n\n"


async def encode_batches(batches: AsyncIterator[list[SSEFrame] | None]) -> AsyncIterator[bytes]:
    """`None` from the source means "silence": a ping comment goes out."""
    async for batch in batches:
        if batch is None:
            yield PING_FRAME
        elif batch:
            yield b"".join(frame.encode() for frame in batch)
