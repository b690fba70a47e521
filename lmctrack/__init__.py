"""lmctrack: linear mode connectivity and the lottery ticket hypothesis, tracked and reproducible."""

__version__ = "0.1.0"
