"""One module per workflow stage: its `surgeon` subcommands (parser and run function)."""
