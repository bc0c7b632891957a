"""beaverq.impl.storage: durable state on disk.

Framing and segments, the WAL writer and reader, snapshots, group commit, the codec,
the file-system seam, recovery (``Storage.open``), and the offline tools that read a
data directory (``verify``, ``wal dump``).  It knows the model's events and state, and
nothing of the runtime or the front ends.
"""
