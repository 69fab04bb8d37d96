"""``python -m streamrec.cli``: how child processes (consumer, API) are started."""

import sys

from streamrec.cli.main import main

sys.exit(main())
