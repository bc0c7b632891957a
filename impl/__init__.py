"""beaverq.impl: the imperative shell around the pure model, in three rooms.

``storage`` (the log, snapshots and the file-system seam), ``runtime`` (the controller,
its loops, the workers) and ``frontends`` (the CLI, the control socket, the Python API,
the metrics).  docs/architecture.md draws them and follows one job through them.
"""
