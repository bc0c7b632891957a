"""Placeholder command-line entry point; the real CLI replaces this module."""

USAGE = "usage: beaverq <command> [options]  (no commands yet)"


def main() -> int:
    """Print usage and exit successfully."""
    print(USAGE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
