"""OpenHands sessions, in the three shapes OpenHands writes:

* V0 event list (`.json`): a JSON array of events `{id, timestamp, source, message}` plus either an action
  (`action`, `args`, `tool_call_metadata` with the raw model response) or an observation (`observation`,
  `content`, `extras`, `cause` = the id of the action it answers; a command's exit code in
  `extras.metadata.exit_code`);
* V0 evaluation output (`.jsonl`): one instance per line, `{instance_id, instruction, history, metrics,
  test_result, error, metadata}`, its `history` a V0 event list;
* V1 SDK conversation: a folder with `base_state.json` and `events/event-NNNNN-<uuid>.json`, one event per
  file with a `kind` (SystemPromptEvent, MessageEvent, ActionEvent, ObservationEvent, ...), read in NNNNN order.

Actions become assistant tool calls (the calls of one model response merged into one message), observations
tool results; agent bookkeeping (state changes, null observations, condensation) is skipped by kind and
an unknown kind is rejected with its record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import (
    IngestLog,
    TraceFormat,
    head,
    is_regular_file,
    jsonl_records,
    load_json,
    parse_arguments,
    parse_time,
)
from composer_core.traces.openai_messages import chat_message, text_of

NAME = "openhands"
EVENT_FILE = re.compile(r"^event-(\d+)-.+\.json$")
V0_KIND = re.compile(r'"(?:action|observation)"\s*:\s*"')
V0_SOURCE = re.compile(r'"source"\s*:\s*"(?:agent|user|environment)"')
EVAL_BYTES = 1 << 17
BAD_RECORD = (ValueError, TypeError, AttributeError, KeyError, IndexError)

TOOL_ACTIONS = frozenset({"run", "run_ipython", "read", "write", "edit", "browse", "browse_interactive", "mcp", "think",
                          "finish", "reject", "delegate", "task_tracking"})
TOOL_OBSERVATIONS = frozenset({"run", "run_ipython", "read", "write", "edit", "browse", "mcp", "think", "delegate",
                               "task_tracking", "download", "error", "user_rejected"})
ERROR_OBSERVATIONS = frozenset({"error", "user_rejected"})
SKIPPED_V0 = frozenset({"action:change_agent_state", "action:null", "action:recall", "action:condensation",
                        "action:condensation_request", "action:pause", "action:resume", "action:stop",
                        "observation:agent_state_changed", "observation:null", "observation:recall",
                        "observation:condense", "observation:loop_detection"})
SKIPPED_SDK = frozenset({"ConversationStateUpdateEvent", "PauseEvent", "InterruptEvent", "TokenEvent",
                         "LLMCompletionLogEvent", "HookExecutionEvent", "Condensation", "CondensationRequest",
                         "CondensationSummaryEvent"})


def detect(path: Path) -> bool:
    if not is_regular_file(path) and path.is_dir():  # the walk's status, when it has one: no stat for a file
        return (path / "base_state.json").is_file() and (path / "events").is_dir()
    if path.suffix == ".json":
        text = head(path)
        return bool(re.match(r"\[\s*\{", text.lstrip()) and V0_KIND.search(text) and V0_SOURCE.search(text))
    if path.suffix == ".jsonl":
        first = head(path, EVAL_BYTES).lstrip().split("\n", 1)[0]
        return first.startswith("{") and '"instance_id"' in first and '"history"' in first
    return False


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    if path.is_dir():
        yield from _read_sdk(path, log)
    elif path.suffix == ".jsonl":
        yield from _read_eval(path, log)
    else:
        yield from _read_events(path, log)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass
class _Conversation:
    """Messages in session order; the tool calls of one model response are merged into one message."""

    log: IngestLog
    messages: list[Message] = field(default_factory=list)
    calls: dict[str, ToolCall] = field(default_factory=dict)
    response_id: str | None = None
    tools: list[str] = field(default_factory=list)
    model: str | None = None
    version: str | None = None
    outcome: dict[str, Any] = field(default_factory=dict)

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self.response_id = None

    def add_call(self, message: Message, response_id: Any) -> None:
        """An assistant tool call; joins the previous message when the same model response produced both."""
        last = self.messages[-1] if self.messages else None
        if response_id is not None and response_id == self.response_id and last is not None:
            update = {"tool_calls": last.tool_calls + message.tool_calls, "content": last.content or message.content}
            self.messages[-1] = last.model_copy(update=update)
        else:
            self.messages.append(message)
        self.response_id = response_id

    def dispatch(self, kind: str, handler: Callable[[dict[str, Any], Provenance], None] | None,
                 raw: dict[str, Any], record: Provenance, skipped: frozenset[str]) -> None:
        """Account for one event (already counted as read): skipped, used, or rejected."""
        if kind in skipped:
            self.log.skip(kind)
        elif handler is None:
            self.log.reject_at(record, f"unknown event kind: {kind}", raw)
        else:
            try:
                handler(raw, record)
            except BAD_RECORD as error:
                self.log.reject_at(record, f"bad event: {error}", raw)
                return
            self.log.use()

    def trace(self, where: Provenance, trace_id: str, *, task: str | None = None, model: str | None = None,
              outcome: dict[str, Any], meta: dict[str, Any]) -> Trace | None:
        """The session as a Trace, or None (rejected) when no event gave a message."""
        if not self.messages:
            self.log.reject_at(where, "no usable events in the session")
            return None
        first_user = next((message.content for message in self.messages if message.role == "user"), None)
        used = [call.name for message in self.messages for call in message.tool_calls]
        return Trace(trace_id=trace_id, format=NAME, source=where.file, messages=self.messages,
                     task=task or first_user, model=model or self.model, agent_version=self.version,
                     tools=list(dict.fromkeys(self.tools or used)),
                     outcome={key: value for key, value in {**self.outcome, **outcome}.items() if value is not None},
                     meta={key: value for key, value in meta.items() if value})


class _V0(_Conversation):
    """V0 events: actions with `args`, observations with `content` and `extras`, linked by `cause`."""

    def event(self, raw: Any, record: Provenance) -> None:
        if not isinstance(raw, dict):
            self.log.reject_at(record, f"bad event: not an object but a {type(raw).__name__}", raw)
            return
        if isinstance(raw.get("action"), str):
            kind, name = f"action:{raw['action']}", raw["action"]
            handler = {"message": self._message, "system": self._system}.get(name)
            handler = handler or (self._action if name in TOOL_ACTIONS else None)
        elif isinstance(raw.get("observation"), str):
            kind = f"observation:{raw['observation']}"
            handler = self._observation if raw["observation"] in TOOL_OBSERVATIONS else None
        else:
            self.log.reject_at(record, "bad event: neither an action nor an observation", raw)
            return
        if kind == "observation:agent_state_changed":
            self.outcome["agent_state"] = _dict(raw.get("extras")).get("agent_state")
        self.dispatch(kind, handler, raw, record, SKIPPED_V0)

    def _message(self, raw: dict[str, Any], record: Provenance) -> None:
        role = "assistant" if raw.get("source") == "agent" else "user"
        content = text_of(_dict(raw.get("args")).get("content", raw.get("message")))
        self.add(Message(role=role, content=content, timestamp=parse_time(raw.get("timestamp")), provenance=record))

    def _system(self, raw: dict[str, Any], record: Provenance) -> None:
        args = _dict(raw.get("args"))
        names = [_text(_dict(tool.get("function", tool)).get("name")) for tool in args.get("tools") or []]
        self.tools = [name for name in names if name]
        self.version = _text(args.get("openhands_version")) or self.version
        self.add(Message(role="system", content=text_of(args.get("content")),
                         timestamp=parse_time(raw.get("timestamp")), provenance=record))

    def _action(self, raw: dict[str, Any], record: Provenance) -> None:
        args = _dict(raw.get("args"))
        metadata = _dict(raw.get("tool_call_metadata"))
        response = _dict(metadata.get("model_response"))
        choices = response.get("choices") or [{}]
        said = _dict(_dict(choices[0]).get("message"))
        call_id = metadata.get("tool_call_id")
        called = [_dict(call) for call in said.get("tool_calls") or []]
        arguments = next((parse_arguments(_dict(call.get("function")).get("arguments"))
                          for call in called if call_id and call.get("id") == call_id), None)
        if arguments is None:
            arguments = {key: value for key, value in args.items() if key != "thought"}
        call = ToolCall(id=call_id, name=metadata.get("function_name") or raw["action"], arguments=arguments)
        self.calls[str(raw.get("id"))] = call
        self.model = self.model or _text(response.get("model"))
        self.add_call(Message(role="assistant", content=text_of(args.get("thought")),
                              thinking=said.get("reasoning_content") or None, tool_calls=[call],
                              timestamp=parse_time(raw.get("timestamp")), provenance=record), response.get("id"))

    def _observation(self, raw: dict[str, Any], record: Provenance) -> None:
        extras = _dict(raw.get("extras"))
        metadata = _dict(raw.get("tool_call_metadata"))
        call = self.calls.get(str(raw.get("cause")))
        output = text_of(raw.get("content"))
        when = parse_time(raw.get("timestamp"))
        if call is None and not metadata.get("tool_call_id"):
            self.add(Message(role="user", content=output, timestamp=when, provenance=record))
            return
        code = _dict(extras.get("metadata")).get("exit_code", extras.get("exit_code"))
        result = ToolResult(call_id=metadata.get("tool_call_id") or (call.id if call else None),
                            name=metadata.get("function_name") or (call.name if call else None), output=output,
                            is_error=raw["observation"] in ERROR_OBSERVATIONS,
                            exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None)
        self.add(Message(role="tool", tool_result=result, timestamp=when, provenance=record))


class _Sdk(_Conversation):
    """V1 SDK events, one per file, told apart by `kind`."""

    def event(self, raw: Any, record: Provenance) -> None:
        if not isinstance(raw, dict):
            self.log.reject_at(record, f"bad event: not an object but a {type(raw).__name__}", raw)
            return
        kind = str(raw.get("kind"))
        handlers = {"SystemPromptEvent": self._system, "MessageEvent": self._message, "ActionEvent": self._action,
                    "ObservationEvent": self._observation, "UserRejectObservation": self._rejected,
                    "AgentErrorEvent": self._agent_error, "ConversationErrorEvent": self._conversation_error}
        self.dispatch(kind, handlers.get(kind), raw, record, SKIPPED_SDK)

    def _system(self, raw: dict[str, Any], record: Provenance) -> None:
        names = [_text(tool.get("title")) or _text(tool.get("name")) for tool in raw.get("tools") or []]
        self.tools = [name for name in names if name]
        prompt = raw["system_prompt"]
        self.add(Message(role="system", content=text_of(prompt if isinstance(prompt, str | list) else [prompt]),
                         timestamp=parse_time(raw.get("timestamp")), provenance=record))

    def _message(self, raw: dict[str, Any], record: Provenance) -> None:
        said = raw["llm_message"]
        message = chat_message({"role": said["role"], "content": said.get("content"),
                                "reasoning_content": said.get("reasoning_content") or _thinking(said)}, record)
        message.timestamp = parse_time(raw.get("timestamp"))  # a fresh message, set as model_copy would
        self.add(message)

    def _action(self, raw: dict[str, Any], record: Provenance) -> None:
        called = _dict(raw.get("tool_call"))
        call = ToolCall(id=called.get("id") or raw.get("tool_call_id"), name=called.get("name") or raw["tool_name"],
                        arguments=parse_arguments(called.get("arguments")))
        message = Message(role="assistant", content=text_of(raw.get("thought")),
                          thinking=raw.get("reasoning_content") or _thinking(raw), tool_calls=[call],
                          timestamp=parse_time(raw.get("timestamp")), provenance=record)
        self.add_call(message, raw.get("llm_response_id"))

    def _observation(self, raw: dict[str, Any], record: Provenance) -> None:
        observation = raw["observation"]
        code = observation.get("exit_code", _dict(observation.get("metadata")).get("exit_code"))
        self._result(raw, record, text_of(observation.get("content")), bool(observation.get("is_error")),
                     code if isinstance(code, int) and not isinstance(code, bool) else None)

    def _rejected(self, raw: dict[str, Any], record: Provenance) -> None:
        self._result(raw, record, f"Action rejected: {raw.get('rejection_reason', 'User rejected the action')}", True)

    def _agent_error(self, raw: dict[str, Any], record: Provenance) -> None:
        self._result(raw, record, str(raw["error"]), True)

    def _conversation_error(self, raw: dict[str, Any], record: Provenance) -> None:
        self.outcome["error"] = f"{raw.get('code')}: {raw.get('detail')}"

    def _result(self, raw: dict[str, Any], record: Provenance, output: str, failed: bool,
                code: int | None = None) -> None:
        result = ToolResult(call_id=raw.get("tool_call_id"), name=raw.get("tool_name"), output=output,
                            is_error=failed, exit_code=code)
        self.add(Message(role="tool", tool_result=result, timestamp=parse_time(raw.get("timestamp")),
                         provenance=record))


def _thinking(raw: dict[str, Any]) -> str | None:
    """Anthropic thinking blocks joined, or None."""
    blocks = [block.get("thinking") for block in raw.get("thinking_blocks") or [] if isinstance(block, dict)]
    return "\n".join(block for block in blocks if isinstance(block, str)) or None


def _record(prefix: str, index: int, raw: Any) -> str:
    event_id = raw.get("id") if isinstance(raw, dict) else None
    return f"{prefix}[{index}]" if event_id is None else f"{prefix}[{index}] id={event_id}"


def _read_events(path: Path, log: IngestLog) -> Iterator[Trace]:
    events = load_json(path, NAME, log)
    if events is None:
        return
    where = Provenance(format=NAME, file=str(path))
    if not isinstance(events, list):
        log.reject_at(where, "not an OpenHands event list: expected a JSON array of events", head(path, 500))
        return
    session = _V0(log)
    for index, raw in enumerate(events):
        log.record()
        session.event(raw, where.at(_record("events", index, raw)))
    trace = session.trace(where, path.stem, outcome={}, meta={"variant": "v0-events"})
    if trace is not None:
        log.use()
        yield trace


def _read_eval(path: Path, log: IngestLog) -> Iterator[Trace]:
    for where, line in jsonl_records(path, NAME, log):
        if not isinstance(line.get("history"), list):
            log.reject_at(where, "not an OpenHands evaluation record: no 'history' list", line)
            continue
        session = _V0(log)
        for index, raw in enumerate(line["history"]):
            log.record()
            session.event(raw, where.at(_record("history", index, raw)))
        outcome = {key: line[key] for key in ("test_result", "error") if line.get(key) is not None}
        model = _dict(_dict(line.get("metadata")).get("llm_config")).get("model")
        trace = session.trace(where, str(line.get("instance_id") or f"{path.stem}:{where.line}"),
                              task=_text(line.get("instruction")), model=_text(model), outcome=outcome,
                              meta={"variant": "eval-output", "metrics": line.get("metrics")})
        if trace is not None:
            log.use()
            yield trace


def _event_files(folder: Path, log: IngestLog) -> list[Path]:
    """The event files of a conversation in NNNNN order; other files there are rejected."""
    numbered = []
    for child in sorted((folder / "events").iterdir()):
        found = EVENT_FILE.match(child.name)
        if found is not None and child.is_file():
            numbered.append((int(found.group(1)), child))
        elif not child.name.startswith("."):
            log.record()
            log.reject_at(Provenance(format=NAME, file=str(child)), "not an event file: expected event-NNNNN-<id>.json")
    return [child for _, child in sorted(numbered)]


def _read_sdk(folder: Path, log: IngestLog) -> Iterator[Trace]:
    state = load_json(folder / "base_state.json", NAME, log)
    if state is not None:
        log.use()
    state = _dict(state)
    session = _Sdk(log)
    for path in _event_files(folder, log):
        raw = load_json(path, NAME, log)
        if raw is not None:
            record = str(raw.get("id") or path.name) if isinstance(raw, dict) else path.name
            session.event(raw, Provenance(format=NAME, file=str(path), record=record))
    agent = _dict(state.get("agent"))
    model = _dict(agent.get("llm")).get("model")
    metrics = {name: {key: usage.get(key) for key in ("accumulated_cost", "accumulated_token_usage")}
               for name, usage in _dict(_dict(state.get("stats")).get("usage_to_metrics")).items()
               if isinstance(usage, dict)}
    meta = {"variant": "v1-sdk", "working_dir": _dict(state.get("workspace")).get("working_dir"), "metrics": metrics}
    trace = session.trace(Provenance(format=NAME, file=str(folder)), str(state.get("id") or folder.name),
                          model=_text(model), outcome={"execution_status": state.get("execution_status")}, meta=meta)
    if trace is not None:
        yield trace


FORMAT = TraceFormat(NAME, "OpenHands V0 event lists and evaluation output, V1 SDK conversation folders", detect,
                     read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
