"""The OpenAI-compatible API on the claude backend: the real SDK against the scripted fake CLI
(tests/claude/fake_cli.py), driven by the official `openai` client on two instances."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

pytest.importorskip("claude_agent_sdk")

from tests.claude.harness import ClaudeEnv, claude_a, claude_b, claude_env
from tests.instances import Instance

__all__ = ("claude_a", "claude_b", "claude_env")  # fixtures used by name


def client(inst: Instance, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{inst.base_url}/v1", api_key=key, max_retries=0, timeout=60)


async def test_models_and_chat_completion(
    claude_a: Instance, claude_b: Instance, claude_env: ClaudeEnv, api_key: str
) -> None:
    async with client(claude_a, api_key) as ca, client(claude_b, api_key) as cb:
        assert [m.id for m in (await ca.models.list()).data] == ["default", "sonnet", "opus", "haiku"]
        assert (await ca.models.retrieve("claude-sonnet-5")).id == "claude-sonnet-5"
        with pytest.raises(openai.NotFoundError):
            await ca.models.retrieve("gpt-4o")
        mark = claude_env.mark()
        raw = await ca.chat.completions.with_raw_response.create(
            model="sonnet",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == "Echo: hello there (earlier turns: 0)"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 10 and completion.usage.completion_tokens == 5
        assert completion.usage.prompt_tokens_details is not None
        assert completion.usage.prompt_tokens_details.cached_tokens == 3
        records = claude_env.since(mark)
        assert len(records) == 1
        argv = records[0]["argv"]
        assert "sonnet" in argv and "Be brief." in " ".join(argv)
        # The session goes on, on the other instance, resumed from the Postgres transcript.
        stream = await cb.chat.completions.create(
            model="sonnet",
            messages=[{"role": "user", "content": "again"}],
            metadata={"session_id": raw.headers["x-session-id"]},
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Echo: again (earlier turns: 1)"
        response = await cb.responses.create(model="sonnet", input="via responses")
        assert response.status == "completed" and response.output_text == "Echo: via responses (earlier turns: 0)"
