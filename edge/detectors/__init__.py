"""Face detectors: ``base`` (the ``FaceDetector`` protocol, which every detector subclasses, and
box helpers), one module per backend, and ``registry`` (one entry per detector kind). A new
detector is one module plus one registry entry."""
