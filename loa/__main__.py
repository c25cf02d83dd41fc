"""`python -m loa` is the `loa` command (child processes of `loa run` start this way)."""

from loa.cli import main

main()
