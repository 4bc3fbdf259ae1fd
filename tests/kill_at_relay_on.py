"""``python -m edge`` that SIGKILLs itself the instant the relay pin goes high (for the crash test).

``python -m tests.kill_at_relay_on run --config ... --relay mock ...``: the real daemon, with one
change: right after gpiozero drives the relay on, the process kills itself with SIGKILL, the
worst moment for a door (strike open, nothing after the pin change ran).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import edge.relay
from edge.__main__ import main

_on = edge.relay.OutputDevice.on


def _on_then_die(self: Any, *args: Any, **kwargs: Any) -> None:
    _on(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


edge.relay.OutputDevice.on = _on_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
