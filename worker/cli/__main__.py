"""``python -m worker.cli``: the same commands without the ``oppsync`` script."""

from worker.cli import main

main()
