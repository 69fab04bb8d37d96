"""The ``streamrec`` command line: one subcommand per job (``streamrec --help``)."""

from streamrec.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
