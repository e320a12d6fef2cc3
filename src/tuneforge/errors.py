"""The one exception type for mistakes a user can fix."""

import contextlib
from collections.abc import Callable, Iterable, Iterator


class UserError(Exception):
    """A problem with the user's input (config, data, paths, flags).

    The message names the file and line, or the config key, and what was expected. The CLI prints it
    on one line without a traceback and exits with status 2.
    """


class Interrupted(Exception):
    """Training stopped on a signal (Ctrl-C, a scheduler's SIGTERM) after saving a checkpoint at `checkpoint`."""

    def __init__(self, signal_name: str, step: int, checkpoint: str, status: int) -> None:
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint saved in {checkpoint}")
        self.status = status  # the exit status: 128 + the signal's number, as a shell reports a killed command


@contextlib.contextmanager
def unreadable(path: object, what: str, fix: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn a parser's `errors` while reading `path` into one line: the path, that it is no valid `what`, and `fix`."""
    try:
        yield
    except errors as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: not a valid {what} ({reason}); {fix}") from None


def problems_of(checks: Iterable[Callable[[], object]]) -> list[str]:
    """Run every check and return the message of each one that raised UserError (so all are reported at once)."""
    problems = []
    for check in checks:
        try:
            check()
        except UserError as exc:
            problems.append(str(exc))
    return problems
