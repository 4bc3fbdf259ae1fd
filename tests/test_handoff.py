"""The one-slot handoff: newest item once, never blocks the producer, holds one item at most."""

from __future__ import annotations

import gc
import threading
import weakref

from edge.handoff import LatestFrameSlot

# Generous bound for a thread to finish work that takes milliseconds: only a hang would reach it.
JOIN_S = 30.0


class Item:
    """A stand-in frame that can be watched with a weak reference."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pixels = bytearray(1024)


def test_get_returns_newest_once_and_counts_drops() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    for n in range(5):
        slot.put(n)
    assert slot.get(timeout=0) == 4
    assert slot.get(timeout=0) is None  # never the same item twice
    assert slot.dropped == 4
    assert slot.delivered == 1
    slot.put(5)
    assert slot.get(timeout=0) == 5
    assert slot.dropped == 4


def test_get_times_out_empty() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.get(timeout=0.01) is None
    assert slot.delivered == 0


def test_close_wakes_a_waiting_consumer_and_refuses_items() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    results: list[int | None] = []
    consumer = threading.Thread(target=lambda: results.append(slot.get(timeout=None)))
    consumer.start()
    slot.close()
    consumer.join(JOIN_S)
    assert not consumer.is_alive()
    assert results == [None]
    slot.put(1)
    assert slot.get(timeout=0) is None
    slot.close()  # twice is fine
    assert slot.closed


def test_close_releases_a_pending_item() -> None:
    slot: LatestFrameSlot[Item] = LatestFrameSlot()
    item = Item(0)
    watch = weakref.ref(item)
    slot.put(item)
    del item
    slot.close()
    gc.collect()
    assert watch() is None


def test_stalled_consumer_never_blocks_producer_and_memory_holds_one_item() -> None:
    slot: LatestFrameSlot[Item] = LatestFrameSlot()
    alive: weakref.WeakSet[Item] = weakref.WeakSet()

    def produce() -> None:
        for n in range(10_000):
            item = Item(n)
            alive.add(item)
            slot.put(item)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(JOIN_S)  # nobody calls get(): a blocking put would hang here
    assert not producer.is_alive()
    gc.collect()
    assert len(alive) == 1  # every replaced frame was released
    assert slot.dropped == 9_999
    newest = slot.get(timeout=0)
    assert newest is not None and newest.n == 9_999
    assert slot.get(timeout=0) is None


def test_concurrent_consumer_gets_each_item_at_most_once_in_order() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    received: list[int] = []
    last = 20_000  # the final put is never replaced, so the consumer must get it

    def consume() -> None:
        while True:
            item = slot.get(timeout=None)
            if item is None:
                return
            received.append(item)
            if item == last:
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    for n in range(last + 1):
        slot.put(n)
    consumer.join(JOIN_S)
    assert not consumer.is_alive()
    assert received[-1] == last
    assert received == sorted(set(received))  # strictly increasing: no repeats, never older
    assert slot.delivered == len(received)
    assert slot.delivered + slot.dropped == last + 1  # every item taken or counted as dropped
