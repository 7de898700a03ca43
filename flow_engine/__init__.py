"""flow_engine: a standalone optical-flow engine (PWC-Net with a CuPy cost volume).

    from flow_engine import FlowEngine, read_flow, write_flow, flow_to_color, flow_metrics
    engine = FlowEngine()                  # shipped PWC-Net weights, cuda if available
    flow = engine(frames1, frames2)        # RGB [B,3,H,W] uint8 or float [0,1] -> [B,2,H,W] px

It never imports ``actionflow``.
"""
from flow_engine.checkpoints import WeightsError
from flow_engine.engine import FlowEngine
from flow_engine.errors import FlowEngineError
from flow_engine.io.flow_files import FlowFileError, read_flo, read_flow, read_image, write_flo, write_flow
from flow_engine.metrics import flow_metrics
from flow_engine.models.pwcnet import PWCNet
from flow_engine.io.viz import flow_to_color, write_video

__version__ = "0.1.0"
__all__ = [
    "FlowEngine", "FlowEngineError", "FlowFileError", "PWCNet", "WeightsError",
    "flow_metrics", "flow_to_color", "read_flo", "read_flow", "read_image", "write_flo", "write_flow",
    "write_video",
]
