"""Training PWC-Net (``python -m flow_engine train``); the application never imports this package.

- :mod:`~flow_engine.training.cli`: the LightningCLI, export of the weights;
- :mod:`~flow_engine.training.module`: the LightningModule (loss, optimizer, schedule, validation);
- :mod:`~flow_engine.training.datamodule`: the LightningDataModule (which pairs, crops, batches);
- :mod:`~flow_engine.training.losses`: the multi-scale loss and the cost-volume matching loss.
"""
