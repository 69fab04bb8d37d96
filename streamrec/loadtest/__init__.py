"""The load test: a replay through Kafka while an open-loop generator fires lookups.

- ``run``: the orchestration (``run_loadtest``) on a LiveRun;
- ``http``: the load generator, in its own process;
- ``probes``: freshness and consumer-lag probes;
- ``stats``: pure statistics (schedules, percentiles, online hit rates);
- ``report``: JSON, Markdown and PNG output.
"""

from streamrec.loadtest.run import LoadTestOptions, run_loadtest

__all__ = ["LoadTestOptions", "run_loadtest"]
