"""One error tree for every service.

Handlers raise these; only the edges (the Kafka delivery wrapper, CLI commands)
turn them into ack / dead-letter decisions or exit codes.

- :class:`PermanentError`: retrying cannot help (bad input, unknown proposal).
  The message goes to the dead-letter topic with the reason.
- :class:`TransientError`: the world may heal (database down, Slurm busy).
  The message is retried with backoff and never dead-lettered for it.
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Root of every error runstream raises on purpose."""


class PermanentError(RunstreamError):
    """Retrying the same input cannot succeed."""


class TransientError(RunstreamError):
    """A dependency is unavailable; the same input may succeed later."""


class MessageFormatError(PermanentError, ValueError):
    """A message could not be decoded or validated against its topic's models."""


class MessageTooLarge(MessageFormatError):
    """A message bigger than the limit of where it goes (or comes from)."""


class _Missing(PermanentError, KeyError):
    """A KeyError whose message reads as written (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownProposal(_Missing):
    """A proposal that is not registered."""


class PathRefused(PermanentError, ValueError):
    """A message names a file or folder the proposal registry does not give it."""


class InvalidCommand(PermanentError, ValueError):
    """A user command with a bad value (wrong type, unknown setting)."""


class ConfigurationError(PermanentError, ValueError):
    """Settings that cannot work together; raised at start-up."""


class SchemaOutdated(PermanentError, RuntimeError):
    """The database schema is older than this code expects."""


class ServiceUnavailable(TransientError, ConnectionError):
    """Kafka, PostgreSQL, slurmrestd or a file system is not answering."""
