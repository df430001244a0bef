"""The error tree and the exit statuses of every cdsim command.

Pure: imports nothing that does I/O.

    CdsimError                      reference            exit status
    ├── UsageError                  usage                USAGE
    ├── InvalidInput                invalid              INVALID
    │   ├── AppSpecError            appspec-invalid      INVALID
    │   │   └── UnsupportedPlatform unsupported-platform UNSUPPORTED_PLATFORM
    │   ├── AppSpecNotFound         appspec-not-found    INVALID
    │   └── BundleError             bundle-invalid       INVALID
    │       └── UnsafeBundle        bundle-unsafe-member INVALID
    ├── DeploymentError             deployment-failed    DEPLOYMENT_FAILED
    │   ├── FileCollision           file-collision       FILE_COLLISION
    │   └── HookFailed              hook-failed          HOOK_FAILED
    │       └── HookTimedOut        hook-timed-out       HOOK_TIMED_OUT
    ├── EnvironmentProblem          environment          ENVIRONMENT
    └── (anything else)             internal             INTERNAL

Every error carries a ``message`` (where the real agent fails the same way, its text verbatim, for
conformance: `cdsim local` prints it as ``ERROR: {message}``), and where known the ``file``, ``line`` and
``column`` it is about, a ``hint``, and the lifecycle ``event`` it happened in (the engine sets it when
an event fails). ``AppSpecError`` adds ``code`` (validate's finding code) and ``agent_class`` (the
agent's exception class); ``HookFailed`` adds the hook's ``result`` and ``script_path``.
"""
from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from hooks_runtime import HookResult


class ExitStatus(enum.IntEnum):
    """What a cdsim command's exit status means. Documented in the README; mapped in agent.cli."""

    SUCCESS = 0
    HOOK_FAILED = 1
    USAGE = 2
    INVALID = 3
    HOOK_TIMED_OUT = 4
    FILE_COLLISION = 5
    DEPLOYMENT_FAILED = 6
    ENVIRONMENT = 7
    UNSUPPORTED_PLATFORM = 8   # an Amazon ECS or AWS Lambda appspec: validated, never deployed
    TRAFFIC_FAILED = 9   # cdsim wait --traffic: the deployment succeeded, more requests failed than allowed
    INTERNAL = 70


class CdsimError(Exception):
    """Base of every error cdsim raises on purpose."""

    reference = "cdsim-error"
    exit_status = ExitStatus.INTERNAL
    message: str
    hint: str | None
    file: str | None
    line: int | None
    column: int | None
    event: str | None   # the lifecycle event it happened in, once known

    def __init__(self, message: str, *, hint: str | None = None, file: str | None = None,
                 line: int | None = None, column: int | None = None, reference: str | None = None,
                 event: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.file = file
        self.line = line
        self.column = column
        self.event = event
        if reference:
            self.reference = reference

    def location(self) -> str:
        """``file:line:col`` (as much as is known), or ''."""
        if not self.file:
            return ""
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message


class UsageError(CdsimError):
    reference = "usage"
    exit_status = ExitStatus.USAGE


class InvalidInput(CdsimError):
    reference = "invalid"
    exit_status = ExitStatus.INVALID


class AppSpecError(InvalidInput):
    """An appspec the agent refuses (or cdsim does, where the agent would crash or run something unsafe)."""

    reference = "appspec-invalid"
    code: str | None         # stable kebab-case name of the problem (validate's finding code)
    agent_class: str | None  # the agent's exception class; None where the agent crashes

    def __init__(self, message: str, *, code: str | None = None, agent_class: str | None = None,
                 hint: str | None = None, file: str | None = None, line: int | None = None,
                 column: int | None = None, reference: str | None = None, event: str | None = None):
        super().__init__(message, hint=hint, file=file, line=line, column=column, reference=reference, event=event)
        self.code = code
        self.agent_class = agent_class


class UnsupportedPlatform(AppSpecError):
    """An Amazon ECS or AWS Lambda appspec: ``cdsim validate`` checks it (agent.appspec_platforms), but
    cdsim deploys only EC2/On-Premises appspecs, so a deployment of one is refused."""

    reference = "unsupported-platform"
    exit_status = ExitStatus.UNSUPPORTED_PLATFORM


class AppSpecNotFound(InvalidInput):
    reference = "appspec-not-found"


class BundleError(InvalidInput):
    reference = "bundle-invalid"


class UnsafeBundle(BundleError):
    reference = "bundle-unsafe-member"
    members: tuple[str, ...] = ()   # the refused members' names, where known (plan and validate list them)


class DeploymentError(CdsimError):
    reference = "deployment-failed"
    exit_status = ExitStatus.DEPLOYMENT_FAILED


class FileCollision(DeploymentError):
    reference = "file-collision"
    exit_status = ExitStatus.FILE_COLLISION


class HookFailed(DeploymentError):
    """A hook script failed; ``result`` is its hooks_runtime.HookResult."""

    reference = "hook-failed"
    exit_status = ExitStatus.HOOK_FAILED

    result: HookResult | None
    script_path: str | None

    def __init__(self, message: str, *, result: HookResult | None = None, event: str | None = None,
                 script_path: str | None = None, hint: str | None = None, file: str | None = None,
                 line: int | None = None, column: int | None = None, reference: str | None = None):
        super().__init__(message, hint=hint, file=file, line=line, column=column, reference=reference, event=event)
        self.result = result
        self.script_path = script_path


class HookTimedOut(HookFailed):
    reference = "hook-timed-out"
    exit_status = ExitStatus.HOOK_TIMED_OUT


class EnvironmentProblem(CdsimError):
    reference = "environment"
    exit_status = ExitStatus.ENVIRONMENT


def exit_status_for(exc: BaseException) -> ExitStatus:
    """The one place that maps an exception to an exit status."""
    if isinstance(exc, CdsimError):
        return exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.DEPLOYMENT_FAILED
    return ExitStatus.INTERNAL
