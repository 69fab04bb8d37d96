"""The `streamrec` command: one subcommand per job.

Errors we raise on purpose print one line and a hint, and exit with the code
of their class in core.errors; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core import __version__
from core.errors import ConfigError, IndexNotFound, StreamrecError
from core.settings import KafkaSettings, PathSettings, RedisSettings
from streamrec.cli import evaluate, loadtest
from streamrec.cli.options import (
    add_dataset_args,
    catalogue_arg,
    load_interactions,
    resolve_dataset_arg,
)

log = logging.getLogger("streamrec")


# -- subcommands -----------------------------------------------------------------
def cmd_stack(args: argparse.Namespace) -> int:
    from streamrec.local.cluster import LocalCluster, free_cluster_ports
    from streamrec.local.harness import local_ports
    from streamrec.local.stack import LocalStack

    state_dir = PathSettings().state_dir
    rport, kport = local_ports(RedisSettings(), KafkaSettings())
    stack = LocalStack(state_dir, args.redis_port or rport, args.kafka_port or kport)
    # The cluster's ports are chosen once (free ones) and kept beside its data.
    ports_file = state_dir / "redis-cluster.ports"
    cluster = None
    if ports_file.exists():
        cluster = LocalCluster(state_dir, [int(p) for p in ports_file.read_text().split()])
    elif args.cluster and args.action == "up":
        state_dir.mkdir(parents=True, exist_ok=True)
        ports = free_cluster_ports()
        ports_file.write_text(" ".join(map(str, ports)))
        cluster = LocalCluster(state_dir, ports)
    if args.action == "up":
        started = [s.name for s in stack.up()]
        if args.cluster and cluster is not None:
            started += [f"{s.name}:{s.port}" for s in cluster.up()]
        print("started: " + (", ".join(started) or "nothing (already running)"))
    elif args.action == "down":
        stopped = stack.down()
        if cluster is not None:
            stopped += cluster.down()
            ports_file.unlink(missing_ok=True)
        print("stopped: " + (", ".join(stopped) or "nothing (none running that we started)"))
    status = stack.status()
    if cluster is not None and args.action != "down":
        status.update(cluster.status())
    for name, text in status.items():
        print(f"{name:7s} {text}")
    if cluster is not None and args.action != "down":
        print(
            f"use the cluster with: STREAMREC_REDIS_URL={cluster.url} STREAMREC_REDIS_CLUSTER=true"
        )
    return 0


def cmd_build_index(args: argparse.Namespace) -> int:
    from offline.job import OfflineSettings
    from offline.schedule import parse_duration, run_every

    settings = OfflineSettings()
    if args.dim:
        settings = settings.model_copy(update={"dim": args.dim})
    artifacts = args.artifacts_dir or PathSettings().artifacts_dir
    try:
        every = parse_duration(args.every) if args.every else None
        window = int(parse_duration(args.window) * 1000) if args.window else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if (window is not None or every is not None) and not args.from_topic:
        raise ConfigError("--window and --every need --from-topic")
    if every is None:
        _build_once(args, settings, artifacts, window)
        return 0
    stop = threading.Event()
    _stop_on_signals(stop.set)
    log.info("building every %s from the topic; SIGTERM/SIGINT stop", args.every)
    failures = run_every(
        every, lambda: _build_once(args, settings, artifacts, window), stop, runs=args.runs
    )
    return 1 if failures and args.runs is not None else 0


def _build_once(
    args: argparse.Namespace, settings: Any, artifacts: Path, window_ms: int | None
) -> None:
    """One build: from the dataset options, or from the clicks topic (--from-topic)."""
    from consumer.settings import ConsumerSettings
    from core.catalogue import Catalogue
    from evaluation.ranker import build_index
    from offline.index import load_current
    from offline.stream import read_topic
    from producer.catalogue import load_catalogue_file

    if args.from_topic:
        kafka = KafkaSettings()
        # What the consumer would take: its feedback rules, its future-dated limit.
        consumer = ConsumerSettings()
        read = read_topic(
            kafka,
            window_ms=window_ms,
            feedback=consumer.state.rules.feedback,
            max_future_ms=consumer.max_future_ms,
        )
        print(read.summary(kafka.topic), file=sys.stderr)
        frame, source = read.frame, f"topic {kafka.topic} at {kafka.bootstrap}"
        # The catalogue: the one given, else the current version's (kept build to build).
        catalogue_source = catalogue_arg(args)
        if catalogue_source is not None:
            catalogue, report = load_catalogue_file(catalogue_source.path, catalogue_source.format)
            print(report.summary(), file=sys.stderr)
        else:
            try:
                catalogue = load_current(artifacts).catalogue
            except IndexNotFound:  # nothing published yet
                catalogue = Catalogue()
    else:
        data = load_interactions(args)
        frame, catalogue, source = data.frame, data.catalogue, data.source
    index = build_index(
        frame, artifacts, settings, before_ts=args.before_ts, catalogue=catalogue, source=source
    )
    m = index.manifest
    ranker = m.params.get("ranker")
    trained = f"ranker of {ranker['trees']} trees" if ranker else "no ranker"
    print(
        f"index {m.version}: {m.item_count} items x {m.dim} dims ({m.method}) from {m.source}; "
        f"catalogue of {len(index.catalogue)} items; {trained}"
    )


def cmd_consume(args: argparse.Namespace) -> int:
    from consumer.settings import ConsumerSettings
    from consumer.worker import Worker

    overrides: dict[str, Any] = {}
    if args.group:
        overrides["group_id"] = args.group
    settings = ConsumerSettings(**overrides)
    worker = Worker(settings)
    _stop_on_signals(worker.stop.set)
    stats = worker.run(idle_exit_s=args.idle_exit, max_events=args.max_events)
    print(" ".join(f"{k}={v}" for k, v in stats.as_dict().items()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import uvicorn

    # Several workers: prometheus-client's multiprocess mode. Every worker writes
    # its metrics under one fresh directory, and whichever answers /metrics reads
    # them all (serving/metrics.py). The variable must be set before a worker
    # imports prometheus_client: workers are fresh processes, this one has
    # imported it already, so one worker (in this process) keeps its own registry.
    own_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="streamrec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        _serve(uvicorn, args)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


def _serve(uvicorn: Any, args: argparse.Namespace) -> None:
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        # JSON errors for requests the parser refuses, a bounded request head.
        http="serving.protocol:HttpProtocol",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level.lower(),
        access_log=False,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from producer.client import ClickProducer, ensure_topics
    from producer.frame import to_events
    from producer.replay import Pacing, replay

    kafka = KafkaSettings()
    df = load_interactions(args, with_catalogue=False).frame
    ensure_topics(kafka)
    stop = threading.Event()
    _stop_on_signals(stop.set)
    with ClickProducer(kafka) as producer:
        summary = replay(
            to_events(df),
            producer,
            Pacing(speed=args.speed, rate=args.rate),
            progress=not args.no_progress,
            total=len(df),
            stop=stop,
        )
    print(
        f"sent {summary.sent} events to {kafka.topic} in {summary.seconds:.1f}s "
        f"({summary.rate:,.0f} events/s)"
    )
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    print(resolve_dataset_arg(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamrec.local.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            rate=args.rate,
            speed=args.speed,
            requests=args.requests,
            keep_running=args.keep_running,
            keep_serving=args.keep_serving,
        ),
        load_interactions(args),
    )


# -- plumbing ------------------------------------------------------------------
def _stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; finishing the current batch", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Streaming real-time session recommender.",
        epilog="Settings come from STREAMREC_* environment variables; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"streamrec {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("STREAMREC_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="start/stop/report the local Redis and Kafka-protocol broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--redis-port", type=int, help="default: the port in STREAMREC_REDIS_URL")
    p.add_argument("--kafka-port", type=int, help="default: the port in STREAMREC_KAFKA_BOOTSTRAP")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="with up: also a local 3-master Redis Cluster on free ports (down stops it too)",
    )
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("build-index", help="build item embeddings and a FAISS index offline")
    add_dataset_args(p)
    p.add_argument(
        "--artifacts-dir", type=Path, help="default: $STREAMREC_ARTIFACTS_DIR or ./artifacts"
    )
    p.add_argument(
        "--dim", type=int, help="embedding dimension (default: STREAMREC_OFFLINE_DIM or 64)"
    )
    p.add_argument("--before-ts", type=int, help="only use events before this epoch-ms time")
    t = p.add_argument_group("retraining from the stream (docs/own-data.md)")
    t.add_argument(
        "--from-topic",
        action="store_true",
        help="build from the events on the clicks topic (STREAMREC_KAFKA_*) instead of a file",
    )
    t.add_argument(
        "--window",
        metavar="DURATION",
        help="with --from-topic: only the last DURATION of event time (e.g. 30d, 12h)",
    )
    t.add_argument(
        "--every",
        metavar="DURATION",
        help="with --from-topic: build again every DURATION (e.g. 1h) until stopped",
    )
    t.add_argument("--runs", type=int, help=argparse.SUPPRESS)  # tests: stop after N builds
    p.set_defaults(func=cmd_build_index)

    p = sub.add_parser("consume", help="run a consumer-group worker (Kafka -> Redis state)")
    p.add_argument("--group", help="consumer group id (default: STREAMREC_CONSUMER_GROUP_ID)")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds with no events")
    p.add_argument("--max-events", type=int, help="exit after applying this many events")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("serve", help="run the recommendation API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "replay", help="replay MovieLens ratings (or your click log) to Kafka in timestamp order"
    )
    add_dataset_args(p)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, help="multiple of real time (e.g. 1e6)")
    pace.add_argument("--rate", type=float, help="events per second")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("dataset", help="find (or download and verify) a dataset; print its path")
    add_dataset_args(p, own_data=False)
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("demo", help="the whole pipeline end to end on the local stack")
    add_dataset_args(p)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, default=None, help="replay events per second (default: 25000)"
    )
    pace.add_argument("--speed", type=float, help="replay at this multiple of real time")
    p.add_argument("--requests", type=int, default=2000, help="API lookups for the latency probe")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the stack, consumer and API running at the end (detached)",
    )
    keep.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep the page, API and consumer serving until Ctrl-C, then clean up",
    )
    p.set_defaults(func=cmd_demo)
    evaluate.register(sub)
    loadtest.register(sub)
    return parser


# Libraries that narrate every connection or request at INFO; they speak at
# WARNING unless DEBUG is asked for.
CHATTY_LOGGERS = ("kafka", "httpx", "httpcore", "faiss", "uvicorn.access")


class ClosedTransportNoise(logging.Filter):
    """kafka-python 3.0 can still poll a connection it has just closed while the
    client shuts down, and logs the AttributeError of its socket (now None) with a
    traceback at ERROR: "<KafkaTCPTransport [none] (closed)>: Error receiving
    network data". Nothing is lost (the connection was closed on purpose), and a
    user should not find a stack trace in a clean exit's log: drop exactly that."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(exc, AttributeError)
            and "(closed)" in record.getMessage()
            and "Error receiving network data" in record.getMessage()
        )


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka.net.transport").addFilter(ClosedTransportNoise())
    if level != "DEBUG":
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        try:
            return int(args.func(args))
        except ValidationError as exc:
            raise ConfigError(
                f"invalid settings: {exc}", hint="check the STREAMREC_* environment variables"
            ) from exc
    except StreamrecError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
