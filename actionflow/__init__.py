"""actionflow: two-stream action recognition (dance above all) on flow from ``flow_engine``."""
__version__ = "0.1.0"
