"""Native libraries that write to stderr themselves (TFLite's C++ logger), filtered at the fd.

ai-edge-litert prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to file
descriptor 2 each time an interpreter is made, with no setting to turn it off. Python logging
cannot catch it, so while models load, fd 2 goes to a temporary file; afterwards every line is
written back to stderr except the known harmless ones. Nothing else is lost or reordered.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# Informational lines of native code that say nothing a user can act on.
HARMLESS_NATIVE_LINES = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextmanager
def filtered_native_stderr(drop: tuple[str, ...] = HARMLESS_NATIVE_LINES) -> Iterator[None]:
    """Run the block with fd 2 captured; then replay it to stderr without the ``drop`` lines.

    Use only around short, single-threaded work (loading models at start): another thread's
    writes to stderr in the meantime are held back until the block ends, not lost.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().splitlines(keepends=True)
                if line.rstrip(b"\r\n").decode("utf-8", "replace") not in drop
            ]
            if kept:
                os.write(2, b"".join(kept))
