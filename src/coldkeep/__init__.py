"""coldkeep: data protection for an ML research lab."""

__version__ = "0.1.0"
