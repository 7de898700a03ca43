"""The flow networks and methods behind :class:`flow_engine.FlowEngine`.

- :mod:`~flow_engine.models.pwcnet`: PWC-Net (official ``pwc_dc_net`` names) and its checkpoint layouts;
- :mod:`~flow_engine.models.correlation`: PWC-Net's cost volume (CuPy CUDA kernel, PyTorch path);
- :mod:`~flow_engine.models.raft`: RAFT from torchvision, both weight layouts;
- :mod:`~flow_engine.models.classical`: OpenCV DIS, ``dis_fine``, Farneback, TV-L1.
"""
