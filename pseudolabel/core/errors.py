"""The one domain exception: the CLI turns it into a one-line error and exit code 1."""


class PseudoError(Exception):
    """A problem with the user's input or environment, described in one line."""
