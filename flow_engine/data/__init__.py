"""Training and evaluation pairs for PWC-Net (``(img1, img2, flow, valid)`` items).

- :mod:`~flow_engine.data.datasets`: FlyingChairs, FlyingThings3D, Sintel, KITTI, the ``cases`` layout;
- :mod:`~flow_engine.data.teacher_labels`: a teacher engine's labels of real videos (written once, read as a dataset);
- :mod:`~flow_engine.data.synthetic`: procedural pairs with exact flow, rendered on the device;
- :mod:`~flow_engine.data.augment`: spatial and photometric augmentation of pairs.
"""
