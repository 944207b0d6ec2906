"""The ``fapm`` command: a parser and one handler per subcommand, each calling a workflow."""
