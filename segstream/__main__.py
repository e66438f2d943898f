"""``python -m segstream``: the same command line as the ``segstream`` script."""

from segstream.cli import main

main()
