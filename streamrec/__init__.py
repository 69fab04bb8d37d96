"""streamrec: the command line and the local stack that tie the components together."""

__version__ = "0.1.0"
