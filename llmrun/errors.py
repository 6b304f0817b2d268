"""One exception hierarchy for everything llmrun can report.

`RunnerError`s carry what a caller needs to act or to file a bug: the runner, the tool's
exit code and the tail of its stderr. Each class has an `exit_code` for the command line
and an `http_status` for the daemon.
"""

from __future__ import annotations

import signal


class LlmrunError(Exception):
    exit_code = 1
    http_status = 500
    retryable = False
    """Whether the same request may succeed if tried again later (rate limits, overload, outages)."""

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(LlmrunError):
    exit_code = 2
    http_status = 500


class RunnerNotFound(LlmrunError):
    """No runner of that name or alias is known."""

    exit_code = 2
    http_status = 404


class RunnerError(LlmrunError):
    """A runner failed; carries the tool's exit code and stderr tail when there was a process."""

    def __init__(
        self,
        message: str = "",
        *,
        runner: str | None = None,
        exit_code: int | None = None,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.runner = runner
        self.process_exit_code = exit_code
        self.stderr = stderr
        self.stopped: str | None = None
        """Set when llmrun stopped the tool with a signal: after what ("" when not known)."""

    def __str__(self) -> str:
        text = self.message
        code = self.process_exit_code
        if code is not None and code < 0:
            # A signal's negative code is Python's, not the tool's: say what happened instead.
            ended = ended_by_signal(-code, self.stopped)
            if f"exited with code {code}" in text:
                return text.replace(f"exited with code {code}", f"did not finish: {ended}", 1)
            return f"{text} ({ended})"
        if code is not None and "exit code" not in text:
            text += f" (exit code {code})"
        return text

    def with_process(
        self, *, runner: str, exit_code: int | None, stderr: str, stopped: str | None = None
    ) -> RunnerError:
        """Fill in the process facts that were not known where the error was raised."""
        self.runner = self.runner or runner
        if self.process_exit_code is None:
            self.process_exit_code = exit_code
        if not self.stderr:
            self.stderr = stderr
        if self.stopped is None:
            self.stopped = stopped
        return self


def ended_by_signal(number: int, stopped: str | None) -> str:
    """'llmrun stopped it (SIGTERM) 3 s after ...', or 'it was killed by SIGKILL, not by llmrun'."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if stopped is None:
        return f"it was killed by {name}, not by llmrun"
    return f"llmrun stopped it ({name})" + (f" {stopped}" if stopped else "")


class BinaryNotFound(RunnerError):
    exit_code = 3
    http_status = 503


class AuthenticationError(RunnerError):
    exit_code = 4
    http_status = 401


class RateLimitError(RunnerError):
    exit_code = 5
    http_status = 429
    retryable = True


class ServiceUnavailable(RunnerError):
    """The model's service failed on its side (5xx, overloaded, unreachable): try again later."""

    exit_code = 6
    http_status = 503
    retryable = True


class ModelNotFound(RunnerError):
    exit_code = 7
    http_status = 404


class ContextLengthExceeded(RunnerError):
    exit_code = 8
    http_status = 400


class SessionNotFound(RunnerError):
    """The session asked to resume does not exist (any more) in the tool."""

    exit_code = 9
    http_status = 404


class RunnerTimeout(RunnerError):
    """The tool went silent for longer than the stall timeout, or overran the hard timeout."""

    exit_code = 10
    http_status = 504
    retryable = True


class ProcessFailed(RunnerError):
    """The tool exited abnormally without saying why in its own output."""

    exit_code = 11
    http_status = 502


class OutputParseError(RunnerError):
    exit_code = 12
    http_status = 502


class StructuredOutputError(OutputParseError):
    """The answer held no JSON matching the request's schema, also when the tool was asked again."""


class OutputTooLarge(RunnerError):
    exit_code = 13
    http_status = 502


class Cancelled(RunnerError):
    exit_code = 130
    http_status = 499


class UnsupportedFeature(RunnerError):
    exit_code = 14
    http_status = 400


class InvalidRequest(RunnerError):
    """The request cannot be sent as it is (nothing to say, say)."""

    exit_code = 2
    http_status = 400


class Overloaded(RunnerError):
    """llmrun's own concurrency limit is reached."""

    exit_code = 15
    http_status = 429
    retryable = True


ERRORS_BY_NAME: dict[str, type[LlmrunError]] = {
    cls.__name__: cls
    for cls in (
        LlmrunError,
        ConfigError,
        RunnerNotFound,
        RunnerError,
        BinaryNotFound,
        AuthenticationError,
        RateLimitError,
        ServiceUnavailable,
        ModelNotFound,
        ContextLengthExceeded,
        SessionNotFound,
        RunnerTimeout,
        ProcessFailed,
        OutputParseError,
        StructuredOutputError,
        OutputTooLarge,
        Cancelled,
        UnsupportedFeature,
        InvalidRequest,
        Overloaded,
    )
}
