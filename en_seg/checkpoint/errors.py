"""The one error every checkpoint load raises for a file it cannot or will not load."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that holds something refused.

    The message names the file and the reason, and quotes nothing from the file but short,
    capped names; nothing in the file has been executed.
    """


def shown(text: str, limit: int = 80) -> str:
    """``text`` from a file, capped at ``limit`` characters and with its control characters
    escaped, for a message."""
    text = text if len(text) <= limit else text[:limit] + '…'
    return text.encode('unicode_escape').decode('ascii')
