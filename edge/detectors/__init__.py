"""Face detectors: ``base`` (the protocol and box helpers), one module per backend, and
``registry`` (one entry per detector kind). A new detector is one module plus one registry entry."""
