"""Command-line interface: thin commands that parse arguments, build a config and call the library."""
