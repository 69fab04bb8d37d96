"""The local stack and the harness that runs streamrec on it.

- ``stack``: start, stop and report a redis-server and the Tansu broker (pid files, logs).
- ``harness``: ``LiveRun``, one isolated deployment (topic, namespace, child processes).
- ``demo``: the main job end to end on a LiveRun.
- ``live_eval``: the prequential evaluation through Kafka, a consumer and the HTTP API.
- ``cluster``: a local 3-master Redis Cluster.
- ``browser``: headless Chromium (Debian's, through Selenium) for the page's tests;
  ``screenshots`` takes the docs' pictures of the page with it.
"""

from streamrec.local.harness import LiveRun
from streamrec.local.stack import LocalStack

__all__ = ["LiveRun", "LocalStack"]
