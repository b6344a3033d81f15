"""ziggurat's benchmarks, one script per module.

Run each from the repository root as a module, with the source tree on the path, e.g.
``PYTHONPATH=src python -m benchmarks.engine_compare --quick``. Benchmark processes run with
Betty's interpreter too, so nothing here imports ziggurat at package import time. Tests may
import benchmarks (pytest puts the repository root on the path); benchmarks never import tests.
"""
