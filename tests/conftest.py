"""Shared pytest configuration: Hypothesis settings profiles.

Three profiles are registered:

- ``ci`` (the default): about 100 examples per test, no deadline, and a printed reproduction
  blob on failure. The ``too_slow`` health check is off because shared CI machines vary in speed.
- ``dev``: 20 examples, for a quick edit-and-rerun loop.
- ``thorough``: 10,000 examples and stateful runs of up to 200 steps, for a long hunt.
  ``BEAVERQ_THOROUGH_EXAMPLES`` changes the number of examples (same depth per run):
  one 10,000-run round of the storage crash machine takes about two hours on a free
  core (0.7 s per run, measured), so ``tools/hunt.py --examples 500`` hunts in rounds
  of minutes, each with a verdict and a seed to replay.

There are two ways to choose a profile:

- the environment variable ``BEAVERQ_HYPOTHESIS_PROFILE``, read when this file is imported::

      BEAVERQ_HYPOTHESIS_PROFILE=dev python -m pytest

- the option ``--hypothesis-profile`` from Hypothesis's pytest plugin::

      python -m pytest --hypothesis-profile=thorough

The plugin loads the option's profile in ``pytest_configure``, which runs after this file is
imported, so the option wins over the environment variable.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=20,
    deadline=None,
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=int(os.environ.get("BEAVERQ_THOROUGH_EXAMPLES", "10000")),
    stateful_step_count=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

settings.load_profile(os.environ.get("BEAVERQ_HYPOTHESIS_PROFILE", "ci"))
