"""User-facing errors: one sentence that says what is wrong, where, and how to fix it.

The CLI turns a `UserError` into that sentence on stderr and exit code 2; anything else is a bug (exit 1).
"""


class UserError(Exception):
    """Bad input from the user (config, file, prompt, checkpoint): reported as one sentence, exit 2."""
