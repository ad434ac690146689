"""`python -m cli`: the same as the `taskexec` command."""

from cli.main import main

main()
