"""One module per cdsim subcommand: register(subparsers) and a func(args) -> int."""
