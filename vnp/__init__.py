"""vnp: distributed VirNucPro (viral short-sequence identification)."""

__version__ = "0.1.0"
