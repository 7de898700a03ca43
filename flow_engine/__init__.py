"""flow_engine: a standalone optical-flow engine (PWC-Net with a CuPy cost volume).

It never imports ``actionflow``.
"""
__version__ = "0.1.0"
