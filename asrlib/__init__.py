"""asrlib: a streaming speech recogniser in pure PyTorch (see README.md and DESIGN.md)."""

__version__ = "0.1.0"
