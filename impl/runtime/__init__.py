"""beaverq.impl.runtime: the running queue.

The controller's command path (R1-R5 of docs/runtime.md), its four loops and its
shutdown, the dispatch window, the worker pools and handlers, the clock, the gc policy,
and the read models and statistics that answer ``status``, ``show`` and ``jobs``.  It
builds on ``storage``; the front ends build on it.
"""
