"""What the models package raises."""

from __future__ import annotations

from lamina.errors import LaminaError


class ModelError(LaminaError):
    """A saved model, its card, or data given to a model was refused."""
