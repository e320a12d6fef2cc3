"""The one exception type for mistakes a user can fix."""

import contextlib
from collections.abc import Iterator


class UserError(Exception):
    """A problem with the user's input (config, data, paths, flags).

    The message names the file and line, or the config key, and what was expected. The CLI prints it
    on one line without a traceback and exits with status 2.
    """


@contextlib.contextmanager
def unreadable(path: object, what: str, fix: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn a parser's `errors` while reading `path` into one line: the path, that it is no valid `what`, and `fix`."""
    try:
        yield
    except errors as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: not a valid {what} ({reason}); {fix}") from None
