"""A researcher's own network and data, run through lmctrack by import path (see README.md)."""
