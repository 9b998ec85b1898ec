"""The one exception type the CLI turns into a one-line error message."""


class FcnsegError(Exception):
    """A user-facing error: bad option, missing or corrupt file, bad dataset.

    The message is one line that names the file or option at fault; the CLI
    prints it as ``Error: <message>`` and exits non-zero.
    """
