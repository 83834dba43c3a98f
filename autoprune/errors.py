"""The one exception type a user's mistake raises; the CLI prints it as a single line and exits 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, in one line."""
