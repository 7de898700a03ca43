"""The base of the application's errors: every error actionflow raises for bad input or a bad setting (a
list, a config key, a video, a checkpoint, a cache entry...) is an :class:`ActionflowError`, each message
naming the file or the key, so a command catches this one class (with ``flow_engine.FlowEngineError``
for what the flow engine raises) and prints one line. Each module keeps its own subclass, which is also
the ValueError or RuntimeError it always was."""


class ActionflowError(Exception):
    """Base of the errors of the application (see the module docstring)."""
