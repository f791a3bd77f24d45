"""The library's expected errors: bad input or setup that the user can fix.

Each such error class also derives from :class:`IchigoError`, so the ``ichigo`` command line
prints it as one line naming the culprit (file, row, key, URL or ``--set`` override) and exits
non-zero, while any other exception, a bug, keeps its traceback.
"""


class IchigoError(Exception):
    """Marker base of the errors a user can act on (config, audio, endpoint, data, runs)."""
