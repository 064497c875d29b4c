"""Data side of phi3v: converters' shared machinery, validation, preview and export. Runs without torch."""

__version__ = "0.1.0"
