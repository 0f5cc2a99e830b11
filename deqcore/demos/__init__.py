"""Runnable demonstrations behind ``python -m deqcore``: the digits DEQ classifier, a batched-solve
comparison, the ``solve`` command and the benchmark runner."""
