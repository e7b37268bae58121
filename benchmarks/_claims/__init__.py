"""Helpers of ``benchmarks/seed_claims.py``: one module per concern, one per study.

* ``budget``     how much work each study does (smoke / quick / full);
* ``common``     seeding, stepping any optimizer, divergence, summary statistics;
* ``baselines``  the comparison optimizers that torch does not ship (EAdam,
                 AdaBelief fallback, AdaGrad-Norm) and the SGD step schedules;
* ``problems``   the objectives and data sets (toy functions, least squares, digits);
* ``verdict``    what the report sections share: ``Verdict``, its outcomes, tables;
* ``figures``    what the figures share: the Agg backend, saving a PNG;
* ``toys``       study 1: AdamL on Three-Hump Camel and Rosenbrock;
* ``adaloss_b0`` study 2: AdaLoss's robustness to ``b0``;
* ``adalo_digits`` study 3: AdaLo's modes and ``kappa`` on digits;
* ``report``     assembles ``report.md`` (every sentence of which is derived from
                 the numbers), ``results.json`` and the figures from the studies.

Each study module owns its runs, its verdicts, tables and report section, its
part of ``results.json`` and its PNG figures.
"""
