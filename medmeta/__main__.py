"""``python -m medmeta``: the command line (medmeta.cli)."""

from medmeta.cli import main

main()
