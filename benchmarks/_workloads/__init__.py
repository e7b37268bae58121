"""The real-workload study of ``benchmarks/workloads.py``: one module per
concern (data, models, tasks, optimizers, the training loop, verdicts, report)."""
