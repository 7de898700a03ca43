"""The commands of ``python -m flow_engine`` (each ``add_arguments(parser)`` and ``run(args)``):
``estimate``, ``eval`` (:mod:`~flow_engine.commands.evaluate`), ``bench``, ``doctor``."""
