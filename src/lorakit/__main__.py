"""`python -m lorakit` runs the CLI."""

from lorakit.cli.app import main

main()
