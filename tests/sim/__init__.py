"""Simulation fakes for tests.

Import them as ``from sim.crashfs import CrashFS``.  ``tests/`` has no ``__init__.py``,
so pytest (import mode "prepend", the default) puts ``tests/`` itself on ``sys.path``
when it loads ``tests/conftest.py``; that is how ``from strategies import ...`` works
too, from ``tests/`` and from ``tests/stateful/`` alike.  This file makes ``sim`` a
regular package so the name cannot be shadowed by a namespace package elsewhere.
"""
