"""The demo backend: deterministic, no network. The prompt is a tiny script:

`sleep <s>` ticks every 100 ms for s seconds; `ask <question>` waits for /answer; `tool <name>` uses a
tool; `fail <msg>` fails; `burst <n>` emits n messages at full speed; anything else echoes word by word.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

from app.agents.base import AgentEvent, AgentRequest, AnswerOutcome

DEMO_MODEL = "demo"
DEMO_TOOLS = ["Read", "Write", "Bash", "AskUserQuestion"]
MAX_SLEEP_SECONDS = 3600
MAX_BURST = 1_000_000


def _message_uuid() -> str:
    """A random (version 4) UUID string, without `uuid4()`'s urandom call and UUID object: a demo message id needs
    no cryptographic randomness, and at a thousand live runs `uuid4()` was a twentieth of an instance's CPU."""
    h = "%032x" % (random.getrandbits(128) & 0xFFFFFFFFFFFF0FFF3FFFFFFFFFFFFFFF | 0x40008000000000000000)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text_message(text: str, model: str, role: str = "assistant") -> AgentEvent:
    return AgentEvent(
        "message",
        {"role": role, "content": [{"type": "text", "text": text}], "model": model, "uuid": _message_uuid()},
    )


class DemoRun:
    interrupt_grace = 0.0

    def __init__(self, request: AgentRequest) -> None:
        self.request = request
        self.model = request.model or DEMO_MODEL
        self.permission_mode = request.permission_mode or "default"
        self._pending: asyncio.Future[str] | None = None
        self._question_id: str | None = None
        self._interrupted = asyncio.Event()
        self._turns = 0
        self._output_tokens = 0

    # -- control -------------------------------------------------------------------------------------
    async def interrupt(self) -> None:
        self._interrupted.set()
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()

    async def answer(self, answer: str, question_id: str | None) -> AnswerOutcome:
        pending = self._pending
        if pending is None or pending.done() or (question_id is not None and question_id != self._question_id):
            return "no_pending_question"
        pending.set_result(answer)
        return "delivered"

    async def set_permission_mode(self, mode: str) -> None:
        self.permission_mode = mode

    async def aclose(self) -> None:
        await self.interrupt()

    # -- the script ----------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[AgentEvent]:
        prompt = self.request.prompt.strip()
        command, _, arg = prompt.partition(" ")
        arg = arg.strip()
        yield AgentEvent("init", {"model": self.model, "permission_mode": self.permission_mode, "tools": DEMO_TOOLS})
        final_text: str
        if command == "sleep" and _is_number(arg):
            seconds = min(float(arg), MAX_SLEEP_SECONDS)
            ticks = round(seconds * 10)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(1, ticks + 1):
                # Sleep to an absolute schedule so ticks do not drift.
                await asyncio.sleep(max(0.0, start + n * 0.1 - loop.time()))
                yield self._say(f"tick {n}")
            final_text = f"slept {arg}s"
        elif command == "ask" and arg:
            self._question_id = str(uuid.uuid4())
            self._pending = asyncio.get_running_loop().create_future()
            # The question is pending before the event goes out, so an answer can never arrive too early.
            yield AgentEvent("question", {"question_id": self._question_id, "question": arg, "options": None})
            answer = await self._pending
            self._pending = None
            final_text = f"Answer: {answer}"
            yield self._say(final_text)
        elif command == "tool" and arg:
            tool_id = f"toolu_{uuid.uuid4().hex[:24]}"
            yield AgentEvent(
                "message",
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": tool_id, "name": arg, "input": {}}],
                    "model": self.model,
                    "uuid": str(uuid.uuid4()),
                },
            )
            yield AgentEvent(
                "message",
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool_id, "content": f"{arg} ran", "is_error": False}
                    ],
                    "uuid": str(uuid.uuid4()),
                },
            )
            final_text = f"Used tool {arg}"
            yield self._say(final_text)
        elif command == "fail":
            yield AgentEvent("error", {"code": "AGENT_ERROR", "message": arg or "failed"})
            return
        elif command == "burst" and arg.isdigit():
            count = min(int(arg), MAX_BURST)
            for n in range(1, count + 1):
                yield self._say(f"burst {n}")
                if n % 256 == 0:
                    await asyncio.sleep(0)  # let the interrupt and the writers in
            final_text = f"burst of {count}"
        else:
            words = f"Echo: {prompt}".split(" ")
            for i, word in enumerate(words):
                chunk = word if i == len(words) - 1 else word + " "
                if self.request.include_partial_messages:
                    yield AgentEvent("partial", {"type": "text_delta", "index": i, "text": chunk})
                yield self._say(chunk)
                await asyncio.sleep(0.01)
            final_text = f"Echo: {prompt}"
        yield AgentEvent(
            "result",
            {
                "is_error": False,
                "num_turns": 1,
                "total_cost_usd": 0.0,
                "usage": {"input_tokens": len(prompt.split()), "output_tokens": self._output_tokens},
                "result": final_text,
                "structured_output": None,
                "stop_reason": "end_turn",
            },
        )

    def _say(self, text: str) -> AgentEvent:
        self._output_tokens += len(text.split()) or 1
        return _text_message(text, self.model)


def _is_number(value: str) -> bool:
    try:
        return float(value) >= 0
    except ValueError:
        return False


class DemoBackend:
    name = "demo"

    def validate(self, request: AgentRequest) -> None:
        """The demo accepts every model, tool and option."""

    def start(self, request: AgentRequest) -> DemoRun:
        return DemoRun(request)

    async def aclose(self) -> None:
        return None
