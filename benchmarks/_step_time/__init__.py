"""Helpers of ``benchmarks/step_time.py``: one module per concern.

* ``costs``   the ideal bytes, FLOPs and state bytes of each rule per element;
* ``cases``   what is timed: (optimizer, path) pairs, the configurations, memory fit;
* ``timing``  stepping the pairs side by side, the copy bandwidth, one record per pair;
* ``epochs``  part 2: whole training epochs of the digits MLP, and their verdict;
* ``report``  the printed tables and the JSON;
* ``plots``   the PNG.

The run facts (commit, machine, load) come from ``benchmarks/_system.py``.
"""
