"""beaverq.impl.frontends: the ways in.

The CLI, the control socket (the CLI's way to a running queue), the Python API and the
Prometheus metrics.  Each turns its own form of a request into calls on the runtime.
"""
