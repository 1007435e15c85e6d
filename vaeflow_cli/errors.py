"""The one error type that the CLI turns into a single line on stderr."""


class VaeflowError(Exception):
    """A user-facing error: bad input, a missing file, a wrong config key.

    The message is one line that says what is wrong, where, and how to fix it. The CLI prints it
    to stderr as ``vaeflow: error: <message>`` and exits with status 2, without a traceback.
    """
