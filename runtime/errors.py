"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """Bad input: the message names the file, key, shape or value and says what to do."""
