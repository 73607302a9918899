"""The one exception type the CLI turns into a one-line error and exit code 2."""


class SurgeonError(Exception):
    """A user-facing failure: bad input, missing file, corrupt artifact."""
