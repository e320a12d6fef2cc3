"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input (config, data, paths, flags).

    The message names the file and line, or the config key, and what was expected. The CLI prints it
    on one line without a traceback and exits with status 2.
    """
