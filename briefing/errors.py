"""Errors raised by the briefing layer: each says what was wrong and what to do."""


class BriefingError(ValueError):
    """Bad input or an unusable model for the briefing layer."""


class ModelLoadError(BriefingError):
    """The model could not be loaded or cannot be served by the briefing attention."""
