"""Errors a user can act on. The CLI prints their message on one line and
exits non-zero; it never shows a traceback for these."""


class LaminaError(Exception):
    """Base class: the message says what went wrong and what to do next."""


class ConfigError(LaminaError):
    """A setting is missing, malformed or out of range."""


class InfraError(LaminaError):
    """A component (Kafka, Maven, Java) could not be installed or started."""


class DatasetError(LaminaError):
    """The master dataset is missing, or an operation on it was refused."""
