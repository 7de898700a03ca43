"""Files in and out: flow files, videos and frame folders, colour-coded flow.

- :mod:`~flow_engine.io.flow_files`: ``.flo``, KITTI PNG, PFM, and image files;
- :mod:`~flow_engine.io.video`: the one reader of videos and frame folders (decord, PyAV, OpenCV), and video lists;
- :mod:`~flow_engine.io.viz`: the Middlebury colour code, PNGs and MP4s of flow.
"""
