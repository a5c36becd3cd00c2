"""Errors that the command line turns into exit statuses."""


class UsageError(Exception):
    """Bad usage or configuration (missing file, empty list, mixed models): exit status 2.

    The message is shown as is, so it names the file, the line or the field at fault.
    """
