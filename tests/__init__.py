"""detloss's test suite; ``tests.cases``, ``tests.helpers`` and ``tests.reference`` are shared with
``benchmarks/``."""
