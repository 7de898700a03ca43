"""The errors of flow_engine: :class:`FlowEngineError` is the base of every one it raises for bad input
or a bad setting (a file, a video, a weights file, a dataset, an engine that cannot be built as asked),
each message naming the file or the setting, so a command catches this one class and prints one line.
Each module keeps its own subclass (WeightsError in checkpoints, VideoError in io.video, ...)."""


class FlowEngineError(ValueError):
    """A FlowEngine that cannot be built as asked (unknown engine, device or dtype), and the base of every
    error of the package (subclasses that were RuntimeErrors, VideoError and DivergedError, still are)."""


class DatasetError(FlowEngineError):
    """A dataset folder that does not have the expected layout (the message names the path)."""
