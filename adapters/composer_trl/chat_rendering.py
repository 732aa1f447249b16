"""Chat messages rendered as text by a tokenizer's chat template, including agent traces' tool turns.

Agent-trace messages (OpenAI style, as `composer_core.traces` writes them) hold assistant `tool_calls` and `tool`
messages with the results. Many chat templates have no tool role: some raise (the embedded model's), some drop the
tool calls without a word (SmolLM2's). Whether a template renders tool calls and results is probed once per
template with a small conversation of marker strings; a template that does not, or that raises on the actual
messages, gets the fallback rendering:

- a `tool` message becomes a user message `[tool result: NAME]\\n<output>` (NAME from the message's `name`, else
  from the assistant tool call its `tool_call_id` answers; `[tool result]` when neither says);
- an assistant message's tool calls are appended to its text, one `[tool call: NAME]\\n<arguments as JSON>` each;
- consecutive user messages are then joined by a blank line (templates without a tool role often require
  user and assistant turns to alternate).

A template that refuses even that is a ConfigError naming the roles and the template, never a jinja traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import TemplateError

from composer_core.errors import ConfigError

Message = dict[str, Any]
TEMPLATE_ERRORS = (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
PROBE_CALL, PROBE_ARGUMENT, PROBE_RESULT = "composer_probe_tool", "composer-probe-argument", "composer-probe-result"
PROBE: list[Message] = [
    {"role": "user", "content": "probe"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_probe", "type": "function", "function": {"name": PROBE_CALL,
                                                              "arguments": {"value": PROBE_ARGUMENT}}}]},
    {"role": "tool", "tool_call_id": "call_probe", "name": PROBE_CALL, "content": PROBE_RESULT},
]
_renders_tools: dict[str, bool] = {}  # template text -> whether it renders tool calls and results


def render_messages(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
    """The text of `messages` under `tokenizer`'s chat template; tool calls and results by the template when it
    renders them, else by the fallback above. Every failure is a ConfigError naming the roles and the template."""
    chat = [dict(message) for message in messages]
    if not any(_is_tool_part(message) for message in chat):
        return _apply(tokenizer, chat, add_generation_prompt)
    if renders_tools(tokenizer):
        try:
            return _template_text(tokenizer, chat, add_generation_prompt)
        except TEMPLATE_ERRORS:
            pass  # this conversation trips it: the fallback below
    return _apply(tokenizer, tool_free_messages(chat), add_generation_prompt, fallback=True)


def renders_tools(tokenizer: Any) -> bool:
    """Whether the template renders an assistant tool call (name and arguments) and a tool result (probed once)."""
    key = str(tokenizer.chat_template)
    if key not in _renders_tools:
        try:
            text = _template_text(tokenizer, PROBE, add_generation_prompt=False)
        except TEMPLATE_ERRORS:
            text = ""
        _renders_tools[key] = all(marker in text for marker in (PROBE_CALL, PROBE_ARGUMENT, PROBE_RESULT))
    return _renders_tools[key]


def tool_free_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """The fallback: tool results as marked user messages, tool calls as assistant text, user runs joined."""
    names = {call.get("id"): _call_name(call) for message in messages for call in message.get("tool_calls") or []}
    converted: list[Message] = []
    for message in messages:
        if message.get("role") == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id"))
            marker = f"[tool result: {name}]" if name else "[tool result]"
            message = {"role": "user", "content": f"{marker}\n{_text(message.get('content'))}"}
        elif message.get("tool_calls"):
            calls = [f"[tool call: {_call_name(call)}]\n{_arguments(call)}" for call in message["tool_calls"]]
            said = [_text(message.get("content"))] if _text(message.get("content")) else []
            rest = {key: value for key, value in message.items() if key != "tool_calls"}
            message = {**rest, "content": "\n\n".join([*said, *calls])}
        if converted and message["role"] == "user" and converted[-1]["role"] == "user":
            converted[-1] = {**converted[-1], "content": f"{_text(converted[-1].get('content'))}\n\n"
                                                        f"{_text(message.get('content'))}"}
        else:
            converted.append(dict(message))
    return converted


def _is_tool_part(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "tool" or bool(message.get("tool_calls"))


def _call_name(call: Mapping[str, Any]) -> str:
    function = call.get("function") if isinstance(call.get("function"), Mapping) else call
    return str(function.get("name") or "unnamed")


def _arguments(call: Mapping[str, Any]) -> str:
    function = call.get("function") if isinstance(call.get("function"), Mapping) else call
    arguments = function.get("arguments")
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)


def _text(content: Any) -> str:
    """Message content as text: a string as it is, a list of OpenAI content parts by their text."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content)
    return str(content)


def _template_text(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    if tokenizer.chat_template is None:
        raise ConfigError(f"the tokenizer of {tokenizer.name_or_path} has no chat template; chat messages need one")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, not text")
    return text


def _apply(tokenizer: Any, messages: list[Message], add_generation_prompt: bool, fallback: bool = False) -> str:
    try:
        return _template_text(tokenizer, messages, add_generation_prompt)
    except TEMPLATE_ERRORS as error:
        roles = ", ".join(dict.fromkeys(str(message.get("role")) for message in messages))
        how = " even with tool calls and results rendered as text (composer_trl.chat_rendering)" if fallback else ""
        raise ConfigError(f"the chat template of {tokenizer.name_or_path} refuses these messages (roles: {roles})"
                          f"{how}: {type(error).__name__}: {error}; use a model whose template renders these roles "
                          "or give the tokenizer a chat template that does") from None
