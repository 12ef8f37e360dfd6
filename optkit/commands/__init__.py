"""One module per CLI command, imported lazily by optkit.cli."""
