"""Implementation details; not a public API."""
