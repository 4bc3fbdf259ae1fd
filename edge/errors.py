"""LiveGate's error types. Each message says what is wrong and what to do about it."""


class LiveGateError(Exception):
    """Base of every error LiveGate raises on purpose."""


class ConfigError(LiveGateError):
    """The configuration is invalid; the daemon refuses to start (door stays locked)."""


class ModelError(LiveGateError):
    """A model file or its sidecar is missing, corrupt or does not match."""


class CameraError(LiveGateError):
    """The frame source cannot be opened or stopped delivering frames."""


class RelayError(LiveGateError):
    """The relay's GPIO pin cannot be opened (no GPIO library or chip, no permission, in use)."""


class StoreError(LiveGateError):
    """The enrolment store is corrupt, foreign or unreadable."""


class InputError(LiveGateError):
    """An input file or folder (images, video) is unusable."""


# Exit codes of every LiveGate command: 0 done, 1 failed while running, 2 refused to start (bad
# config, model, store or input; the relay was not touched).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 2
