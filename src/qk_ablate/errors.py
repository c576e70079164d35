"""One exception type for every user-facing mistake, so the CLI can print it as one line."""


class QKAblateError(ValueError):
    """A problem the user can fix: the message says what is wrong and how to fix it."""
