"""User-facing errors: the CLI and the server print these as one clear line, never a traceback."""


class LTCStreamError(Exception):
    """Base class of every error a user can cause and fix (bad input, missing file, bad setting)."""

    code = "error"  # short machine-readable code, sent to clients as {"type": "error", "code": ...}


class ConfigError(LTCStreamError, ValueError):
    """An out-of-range or inconsistent setting."""

    code = "bad_config"


class ModelNotFoundError(LTCStreamError, FileNotFoundError):
    """A model name or folder that does not exist or lacks files it needs."""

    code = "model_not_found"


class CalibrationMismatchError(LTCStreamError):
    """LTC weights calibrated for another model, sampler, step count, shape or guidance scale."""

    code = "calibration_mismatch"


class NonFiniteError(LTCStreamError, FloatingPointError):
    """A NaN or Inf appeared in a latent or a frame; the chunk is not shown."""

    code = "non_finite"
