"""The data sets and measurements behind the README's tables, beside the application itself.

- :mod:`~actionflow.benchmarks.demo_data`: the demo dance set the default run trains on (drawn by
  :mod:`~actionflow.benchmarks.demo_figure`);
- :mod:`~actionflow.benchmarks.real_motion`: the real-footage benchmark (clips labelled by playback speed);
- :mod:`~actionflow.benchmarks.cache`: the flow cache's bytes, round-trip error and read speed.
"""
