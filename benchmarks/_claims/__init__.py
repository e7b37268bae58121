"""Helpers of ``benchmarks/seed_claims.py``: one module per concern.

* ``budget``     how much work each study does (smoke / quick / full);
* ``common``     seeding, stepping any optimizer, divergence, summary statistics;
* ``baselines``  the comparison optimizers that torch does not ship (EAdam,
                 AdaBelief fallback, AdaGrad-Norm) and the SGD step schedules;
* ``problems``   the objectives and data sets (toy functions, least squares, digits);
* ``toys``       study 1: AdamL on Three-Hump Camel and Rosenbrock;
* ``adaloss_b0`` study 2: AdaLoss's robustness to ``b0``;
* ``adalo_digits`` study 3: AdaLo's modes and ``kappa`` on digits;
* ``plots``      the PNG figures;
* ``report``     ``report.md``, every sentence of which is derived from the numbers.
"""
