"""The commands of ``python -m flow_engine`` (each ``add_arguments(parser)`` and ``run(args)``):
``estimate``, ``viz``, ``eval`` (:mod:`~flow_engine.commands.evaluate`), ``bench``, ``doctor``;
``train`` is :mod:`flow_engine.training.cli`."""
