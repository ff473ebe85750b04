"""The exception tree. Every error a user can cause or meet is one of these.

    RendererError                  exit 1 unless a subclass says otherwise
    ├── UserError                  exit 2: bad input; nothing was sent, nothing written
    │   ├── DocumentError          a model document the schema generator cannot read
    │   ├── ManifestError          one or more problems in a manifest (all of them, at once)
    │   └── UsageError             a command-line mistake the parser could not catch
    ├── ProviderError              raised by the protocol client only
    │   ├── TransientError         worth retrying (transport, timeouts, 408/409/429, ingress 5xx)
    │   ├── JobRejected            this job can never succeed as sent (422 and other 4xx)
    │   ├── RunnerFailed           fal ran the job and the runner failed; a resubmit may succeed
    │   ├── RequestGone            the provider no longer knows the request id (404)
    │   ├── OutcomeUnknown         a submit may or may not have been accepted; never resent blindly
    │   └── AccountError           exit 3: auth or billing; every further request would fail
    └── StateError                 the output directory or its database
        ├── RunLocked              another run holds the output directory
        └── OutageError            exit 75: the shared state or the bucket stayed unreachable
                                   past the outage window (rerun later; nothing is lost)

The CLI is the only place that turns these into text and exit codes (`cli.boundary.error_boundary`).
Messages never contain the API key: the protocol client scrubs it from every body it reads and
never puts headers into errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


class RendererError(Exception):
    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint


class UserError(RendererError):
    exit_code = 2


class UsageError(UserError):
    pass


class DocumentError(UserError):
    def __init__(self, path: str, line: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}:{line}: {message}", hint=hint)
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Problem:
    """One manifest problem, located in the file and in the data."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    message: str
    json_path: str = "$"
    job: str | None = None  # "prompt=… model=… seed=…" when the problem is in an expanded job
    allowed: str | None = None
    suggestion: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def render(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.json_path}: {self.message}"
        if self.job:
            text += f"\n    in job: {self.job}"
        if self.allowed:
            text += f"\n    allowed: {self.allowed}"
        if self.suggestion:
            text += f"\n    did you mean {self.suggestion}?"
        return text


class ManifestError(UserError):
    def __init__(self, problems: list[Problem], *, hint: str | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.json_path))
        count = len(self.problems)
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''} found; nothing was sent",
            hint=hint or "fix the lines above and run `renderer validate` again",
        )

    def __str__(self) -> str:
        # Uncaught in a script or a notebook, the exception must show the problems themselves.
        return "\n".join([*(p.render() for p in self.problems), self.message])


class ProviderError(RendererError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        detail: object = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error_type = error_type
        self.detail = detail


class TransientError(ProviderError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.maybe_sent = False  # the request may have reached the server before the failure
        self.answered = False  # the server answered (a status line arrived) before the failure


class OutcomeUnknown(ProviderError):
    pass


class JobRejected(ProviderError):
    pass


class RunnerFailed(ProviderError):
    pass


class RequestGone(ProviderError):
    pass


class AccountError(ProviderError):
    exit_code = 3


class StateError(RendererError):
    pass


class RunLocked(StateError):
    pass


class OutageError(StateError):
    """The shared state or the object store stayed unreachable for the whole outage window.

    Its own exit code (75, EX_TEMPFAIL: "try again later") tells a scheduler this is not a failed
    job: everything committed stays committed, and rerunning later resumes without paying twice.
    """

    exit_code = 75


def closest(word: object, choices: Iterable[object]) -> str | None:
    options = [str(c) for c in choices]
    found = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return found[0] if found else None
