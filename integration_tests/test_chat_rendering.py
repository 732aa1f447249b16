"""Agent-trace messages (tool calls, tool results) rendered by real chat templates: the template's own rendering
when it has a tool role, the documented fallback when it refuses or drops one, a ConfigError when even that fails.
(SmolLM2's template, which silently drops tool calls, is tested in test_gguf_model.py.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from transformers import AutoTokenizer

from composer_core.errors import ConfigError
from composer_trl.chat_rendering import render_messages, renders_tools, tool_free_messages
from composer_trl.defaults import EMBEDDED_MODEL

# an agent trace as composer_core.traces writes it (Message.to_chat): tool messages carry tool_call_id, no name
TRACE = [
    {"role": "system", "content": "You fix bugs in the repository."},
    {"role": "user", "content": "The test test_sum fails."},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": {"command": "pytest -x\n"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "FAILED test_sum: assert 3 == 4"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "sum.py"}'}},
        {"id": "call_3", "type": "function", "function": {"name": "grep", "arguments": {"pattern": "def sum"}}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "def sum(a, b):\n    return a - b"},
    {"role": "tool", "tool_call_id": "call_3", "content": "sum.py:1"},
]

# a Qwen2-style template with a tool role (tool calls as <tool_call> JSON, results as <tool_response>)
TOOL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}\n<tool_call>\n{\"name\": \"{{ call.function.name }}\", "
    "\"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
USER_ONLY_TEMPLATE = ("{% for message in messages %}{% if message.role != 'user' %}{{ raise_exception('only user "
                      "turns, got ' + message.role) }}{% endif %}{{ message.content }}{% endfor %}")


def tokenizer_with(template: str | None = None):
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def test_the_embedded_template_refuses_the_tool_role_and_gets_the_fallback() -> None:
    tokenizer = tokenizer_with()
    with pytest.raises(Exception, match="unsupported role: tool"):  # the template itself, as transformers runs it
        tokenizer.apply_chat_template(TRACE, tokenize=False)
    assert not renders_tools(tokenizer)
    text = render_messages(tokenizer, TRACE, add_generation_prompt=True)
    assert text == tokenizer.apply_chat_template(tool_free_messages(TRACE), tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|assistant|>") and "<|tool|>" not in text
    assert "Let me look.\n\n[tool call: bash]\n" in text
    assert "<|user|>[tool result: bash]\nFAILED test_sum: assert 3 == 4" in text
    # two results in a row: one user turn (templates without a tool role often require alternating turns)
    assert "[tool result: read_file]\ndef sum(a, b):\n    return a - b\n\n[tool result: grep]\nsum.py:1" in text
    assert text.count("<|user|>") == 3


def test_the_fallback_keeps_every_call_and_argument() -> None:
    converted = tool_free_messages(TRACE)
    assert [message["role"] for message in converted] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert not any("tool_calls" in message or "tool_call_id" in message for message in converted)
    calls = converted[4]["content"].split("\n\n")
    assert [call.split("\n", 1)[0] for call in calls] == ["[tool call: read_file]", "[tool call: grep]"]
    assert [json.loads(call.split("\n", 1)[1]) for call in calls] == [{"path": "sum.py"}, {"pattern": "def sum"}]
    named = tool_free_messages([{"role": "tool", "name": "ls", "content": "a"}, {"role": "tool", "content": "b"}])
    assert named == [{"role": "user", "content": "[tool result: ls]\na\n\n[tool result]\nb"}]


def test_a_template_with_a_tool_role_renders_the_trace_itself() -> None:
    tokenizer = tokenizer_with(TOOL_TEMPLATE)
    assert renders_tools(tokenizer)
    text = render_messages(tokenizer, TRACE, add_generation_prompt=False)
    assert text == tokenizer.apply_chat_template(TRACE, tokenize=False)
    assert "[tool" not in text and text.count("<tool_response>") == 3
    assert '<tool_call>\n{"name": "bash", "arguments": {"command": "pytest -x\\n"}}\n</tool_call>' in text


def test_plain_messages_are_the_template_s_own_rendering() -> None:
    tokenizer = tokenizer_with()
    messages = TRACE[:2]
    assert render_messages(tokenizer, messages, True) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_a_template_that_refuses_even_the_fallback_is_a_config_error() -> None:
    tokenizer = tokenizer_with(USER_ONLY_TEMPLATE)
    with pytest.raises(ConfigError, match=r"the chat template of .*model refuses these messages \(roles: system, user, "
                                          r"assistant\) even with tool calls and results rendered as text.*only user "
                                          r"turns, got system") as caught:
        render_messages(tokenizer, TRACE, add_generation_prompt=False)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(ConfigError, match=r"refuses these messages \(roles: system, user\): TemplateError"):
        render_messages(tokenizer, TRACE[:2], add_generation_prompt=False)
