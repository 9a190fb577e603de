"""The ``secfl`` command line: thin wrappers over library functions."""
