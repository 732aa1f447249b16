"""The OpenAI-messages format, on message lists taken from a real SWE-agent 1.x trajectory's history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import TRACES

from composer_core.traces import openai_messages
from composer_core.traces.formats import IngestLog

SWE_V1 = TRACES / "swe_agent" / "SWE-agent__SWE-agent__6e44b9__sweagenttestrepo-1c2844.traj"
pytestmark = pytest.mark.skipif(not SWE_V1.is_file(), reason=f"shared trace samples not found at {TRACES}")


def real_messages() -> list[dict]:
    """The trajectory's chat history as plain OpenAI messages (SWE-agent keeps tool_call_ids as a list)."""
    messages = []
    for raw in json.loads(SWE_V1.read_text())["history"]:
        message = {key: raw[key] for key in ("role", "content", "tool_calls") if raw.get(key) is not None}
        if raw.get("tool_call_ids"):
            message["tool_call_id"] = raw["tool_call_ids"][0]
        messages.append(message)
    return messages


def test_sessions_as_objects_and_bare_lists_with_rejects(tmp_path: Path) -> None:
    messages = real_messages()
    path = tmp_path / "sessions.jsonl"
    path.write_text("\n".join([json.dumps({"id": "first", "messages": messages}), json.dumps(messages[:3]),
                               "{not json", json.dumps({"messages": [{"role": "narrator", "content": "x"}]})]))
    assert openai_messages.detect(path)
    log = IngestLog()
    first, second = openai_messages.read(path, log)
    assert first.trace_id == "first" and len(first.messages) == len(messages)
    calls = [call for message in first.messages for call in message.tool_calls]
    assert calls[0].name == "find_file" and calls[0].arguments == {"file_name": "missing_colon.py"}
    tool = next(message for message in first.messages if message.role == "tool")
    assert tool.tool_result.call_id == calls[0].id and tool.tool_result.output
    assert second.trace_id == "sessions:2" and len(second.messages) == 3
    assert (log.read, log.used, sum(log.rejected.values())) == (4, 2, 2)
    reasons = [reject.reason for reject in log.examples]
    assert reasons[0].startswith("malformed JSON") and reasons[1] == "bad message: unknown role 'narrator'"
    assert [reject.line for reject in log.examples] == [3, 4]
