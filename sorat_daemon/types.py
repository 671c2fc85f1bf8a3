"""Plain types shared by the agent, the providers and the tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

JSON = dict[str, Any]
Message = dict[str, Any]  # one OpenAI chat message, as JSON


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of one tool call, its ``index`` normalised to 0, 1, 2… within one model response."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # a fragment, appended to what came before
    extra: JSON | None = None  # provider round-trip fields (Gemini's extra_content…), kept for the next call


@dataclass(slots=True)
class Delta:
    """One normalised piece of a streamed model response."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None  # stop | length | tool_calls | content_filter
    usage: JSON | None = None  # prompt_tokens, completion_tokens, total_tokens
    # the provider's choices[0].logprobs for this piece ({"content": [...], "refusal": ...}), as sent
    logprobs: JSON | None = None


@dataclass(slots=True)
class ModelCall:
    model: str
    messages: list[Message]
    tools: list[JSON] | None = None
    tool_choice: Any = None
    params: JSON = field(default_factory=dict)  # passed to the provider as given: temperature, max_tokens…


@dataclass(slots=True)
class ModelResult:
    message: Message  # role, content, and maybe tool_calls and reasoning_content
    finish_reason: str
    usage: JSON | None
    logprobs: JSON | None = None  # the provider's choices[0].logprobs, as sent


class ModelClient(Protocol):
    """What the agent needs of a model: the two calls, nothing of HTTP."""

    async def complete(self, call: ModelCall) -> ModelResult: ...

    def stream(self, call: ModelCall) -> AsyncIterator[Delta]: ...
