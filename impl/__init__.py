"""beaverq.impl: the I/O-bearing implementation (CLI, persistence, clock, serialisation)."""
