"""beaverq.teaching: tools that show the queue at work, kept apart from the shell.

``simulate`` runs the pure model with fake workers on a fake clock; ``demo`` runs a
real ``beaverq run``, kills it and proves nothing was lost; ``fake_clock`` is the clock
both tests and the simulator move by hand.  Nothing in ``beaverq.impl`` imports them
except the CLI, which offers ``beaverq simulate`` and ``beaverq demo``.
"""
