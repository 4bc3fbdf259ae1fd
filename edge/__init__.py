"""LiveGate edge daemon: live-face door access on a Raspberry Pi. Never imports TensorFlow."""

__version__ = "0.1.0"
