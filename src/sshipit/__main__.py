"""`python -m sshipit` runs the same command line as the `sshipit` script."""

from sshipit.cli import run

run()
