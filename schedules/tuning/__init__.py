"""Autotuning of lowbit's own design space: each schedule rule's tunables, the search, its records.

- :mod:`.records`: the tuning log (JSON lines, one per measured candidate), readable without TVM's compiler.
- :mod:`.space`: each rule's tunable configs for a workload, and how a record is matched to a layer.
- :mod:`.cost_model`: MetaSchedule's XGBoost cost model fed lowbit's candidate schedules.
- :mod:`.tuner`: the search (measure the default, then the cost model's top picks, cold cache) and
  :func:`~.tuner.tune`, which ``lowbit tune`` runs; it times candidates in this process.
- :mod:`.remote`: timing on the devices behind a ``tvm.rpc`` tracker (``lowbit tune --rpc``).
- :mod:`.offline`: export built candidates and import the times ``lowbit measure`` took elsewhere.
"""
