"""Ctrl-C and SIGTERM (what schedulers send before they kill a job) stop a training run without losing it.

During training the first signal lets the current optimizer step finish, then TRL saves a full checkpoint
(weights, optimizer, scheduler, data order, RNG) and its loop ends: `--resume` continues from there. A second
signal, or a signal outside training (nothing to save yet), stops at once with `RunInterrupted`. The exit code
is 128 + the signal number, as a shell reports a process ended by that signal (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from transformers import TrainerCallback

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal before it could finish cleanly; `exit_code` is 128 + the signal."""

    def __init__(self, received: signal.Signals) -> None:
        super().__init__(f"stopped by {received.name}")
        self.signal = received
        self.exit_code = 128 + int(received)


class GracefulStop(TrainerCallback):
    """Signal handlers for the whole job (a context manager) and the TRL callback that turns the first signal
    during training into "save a checkpoint after this step, then stop"."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.training = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(number)
        if first and self.training:
            print(f"\n{self.received.name}: finishing the current step, then saving a checkpoint (send it again to "
                  "stop at once)", file=sys.stderr)
            return
        raise RunInterrupted(signal.Signals(number))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False
