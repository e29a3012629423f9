"""The one exception type for problems the user can fix (bad file, bad flag)."""


class UserError(Exception):
    """A problem with the user's input. The message is one line naming the file and the problem.

    Scripts catch it at the top level, print `error: <message>` to stderr and exit non-zero,
    without a traceback unless `--debug` is given.
    """
