"""The one-slot handoff between capture and the pipeline: the consumer always gets the newest frame.

A queue would let the pipeline fall behind the camera and decide on old frames; this slot holds at
most one item, so a slow consumer skips frames instead (counted in ``dropped``) and the producer
(the capture thread) never waits on it.
"""

from __future__ import annotations

import logging
import threading
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """Holds the newest item only. ``put`` never blocks; ``get`` hands each item out once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._dropped = 0
        self._delivered = 0

    def put(self, item: T) -> None:
        """Offer the newest item; an item not yet taken is replaced and counted as dropped.

        After ``close`` the item is discarded (the consumer is gone; holding it would only keep
        a frame in memory).
        """
        with self._cond:
            if self._closed:
                return
            if self._full:
                self._dropped += 1
            self._item = item
            self._full = True
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The newest item not handed out before; None after ``timeout`` seconds or when closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._full or self._closed, timeout)
            if self._closed or not self._full:
                return None
            item = self._item
            self._item = None  # release the frame: the slot must not keep it alive
            self._full = False
            self._delivered += 1
            return item

    def close(self) -> None:
        """Wake every waiting ``get`` (they return None) and refuse further items. Idempotent."""
        with self._cond:
            self._closed = True
            self._item = None
            self._full = False
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def dropped(self) -> int:
        """Items replaced before anyone took them (stale frames skipped)."""
        with self._cond:
            return self._dropped

    @property
    def delivered(self) -> int:
        """Items handed out by ``get``."""
        with self._cond:
            return self._delivered
