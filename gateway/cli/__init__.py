"""The ``mragw`` command line."""
