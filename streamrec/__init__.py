"""streamrec: the command line, the local stack and the load test that tie the components together.

- ``streamrec.cli``: the ``streamrec`` command, one subcommand per job;
- ``streamrec.local``: the local stack (Redis, broker) and the harness that runs processes on it;
- ``streamrec.loadtest``: the load test.
"""

from core import __version__

__all__ = ["__version__"]
