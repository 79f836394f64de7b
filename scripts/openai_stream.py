"""One streamed response through the official `openai` client: time to first delta and events per second.

    uv run python -m scripts.openai_stream [--burst N] [--repeat K]

Starts embedded Postgres and Valkey and one Granian process (demo backend), then streams, through
`AsyncOpenAI`, a chat completion and a Responses stream of the demo's `burst N` script (N assistant messages
as fast as the agent emits them) and of a short echo. Prints a JSON line per measurement."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

from app.asgi import build_alchemy_config
from app.lib import migrations
from tests.instances import create_api_key, make_settings
from tests.processes import GranianProcess
from tests.servers import TestServers


async def chat(client: AsyncOpenAI, prompt: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    first: float | None = None
    chunks = 0
    stream = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": prompt}], stream=True
    )
    async for chunk in stream:
        chunks += 1
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {
        "api": "chat.completions",
        "prompt": prompt,
        "chunks": chunks,
        "ttfd_ms": round((first or 0) * 1000, 1),
        "total_s": round(total, 3),
        "events_per_s": round(chunks / total, 1),
    }


async def responses(client: AsyncOpenAI, prompt: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    first: float | None = None
    events = 0
    stream = await client.responses.create(model="demo", input=prompt, stream=True)
    async for event in stream:
        events += 1
        if first is None and event.type == "response.output_text.delta":
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {
        "api": "responses",
        "prompt": prompt,
        "events": events,
        "ttfd_ms": round((first or 0) * 1000, 1),
        "total_s": round(total, 3),
        "events_per_s": round(events / total, 1),
    }


async def run(burst: int, repeat: int) -> None:
    servers = TestServers.start()
    proc: GranianProcess | None = None
    try:
        await migrations.upgrade(build_alchemy_config(make_settings(servers, "probe")))
        key = await create_api_key(servers, f"probe-{uuid.uuid4().hex[:8]}")
        logs = Path(tempfile.mkdtemp(prefix="openai-probe-"))
        proc = GranianProcess.start(servers, "probe", logs, RATE_LIMIT_PER_MINUTE="0")
        async with AsyncOpenAI(base_url=f"{proc.base_url}/v1", api_key=key, max_retries=0, timeout=120) as client:
            await chat(client, "warm up")  # first-request costs (connections, caches) out of the figures
            for _ in range(repeat):
                for prompt in ("hello there from the probe", f"burst {burst}"):
                    print(json.dumps(await chat(client, prompt)))
                    print(json.dumps(await responses(client, prompt)))
    finally:
        if proc is not None:
            proc.terminate()
        servers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.burst, args.repeat))


if __name__ == "__main__":
    main()
