"""LiveGate's measurement tools (not shipped to the Pi by ``scripts/install.sh``).

``python -m bench``: per-stage latency, fps, memory, detector choice, peers side by side;
``python -m bench.detector_compare``: do the other detection paths find res10's faces;
``python -m bench.device_guard_check``: how often the device guard fires on labelled frames;
``python -m bench.memory``: the daemon's memory step by step (imports, models, first frames) and
its peak RSS end to end.
The bench imports ``edge``; ``edge`` never imports the bench.
"""
