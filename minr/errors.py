"""The one exception type for user mistakes: the CLI prints its message on one line, without a traceback."""


class MinrError(Exception):
    """A problem the user can fix (bad option, missing file, wrong checkpoint). The message says what to do."""
