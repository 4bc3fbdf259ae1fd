"""A stand-in daemon for the crash test: emits numbered events through the real journal and
delivery, resuming the numbering from the journal when restarted after a kill -9.

``python -m tests.event_producer --journal J --port P --count 100 --interval 0.01``
exits 0 once every event up to ``count`` is acknowledged by the broker, 1 if not within
``--drain-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from edge.config import MqttConfig
from edge.delivery import EventDelivery
from edge.events import EventBus, new_event
from edge.journal import EventJournal
from edge.mqtt import MqttLink, device_topic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="door")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    config = MqttConfig(port=args.port, device_id=args.device)
    journal = EventJournal(args.journal)
    link = MqttLink(config)
    delivery = EventDelivery(journal, link, device_topic(config, "event"))
    bus = EventBus(journal, [delivery.on_event])
    link.start()
    delivery.start()
    latest = journal.latest()
    start = int(latest[1].data["n"]) + 1 if latest is not None else 0
    print(f"producer {os.getpid()} starts at n={start}", flush=True)
    for n in range(start, args.count):
        bus.emit(new_event("command", n=n, pid=os.getpid()))
        time.sleep(args.interval)
    link.wait_connected(args.drain_timeout)
    delivered = delivery.drain(args.drain_timeout)
    delivery.stop()
    link.stop()
    journal.close()
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
