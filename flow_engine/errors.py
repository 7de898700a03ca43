"""Errors shared by several modules of flow_engine."""


class DatasetError(ValueError):
    """A dataset folder that does not have the expected layout (the message names the path)."""
