"""authscope: ephemeral registry auth scopes for GitLab CI fan-out releases."""

__version__ = "0.1.0"
