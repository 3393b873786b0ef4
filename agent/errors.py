"""Domain errors, each also a builtin so callers can catch either."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error edge-agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The configuration is invalid; ``key`` names the dotted TOML key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class ConfigErrors(ConfigError):
    """Every error found in one configuration, each naming its key; one line each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        if len(self.errors) == 1:
            only = self.errors[0]
            super().__init__(only.key, str(only)[len(only.key) + 2 :] if only.key else str(only))
        else:
            lines = "".join(f"\n  {error}" for error in self.errors)
            super().__init__("", f"{len(self.errors)} errors in the configuration:{lines}")

    def one_line(self) -> str:
        """The errors joined for a log line."""
        return "; ".join(str(error) for error in self.errors)


class UsageError(AgentError, ValueError):
    """The command line asks for something that cannot be done as written."""


class StoreError(AgentError, OSError):
    """An instance could not be stored; ``status`` is the DICOM status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PeerError(AgentError, ConnectionError):
    """A remote peer could not be reached or refused what we asked."""


class QueryError(AgentError, ValueError):
    """A query or retrieve identifier cannot be answered; ``status`` is the DICOM status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IndexUnavailable(AgentError, OSError):
    """The archive's index cannot be read or written (a locked, missing or damaged file)."""
