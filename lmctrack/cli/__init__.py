"""The lmctrack command line: thin commands that parse, call one workflow, and print URIs
(stdout) and tables (stderr)."""

# isort: off  (the import order is the order of the commands in --help)
from lmctrack.cli import commands, soup, find_k, lineage, store, analyses, align, distill  # noqa: F401, I001
from lmctrack.cli.options import app, data_app, whole_summaries

__all__ = ["app"]

whole_summaries(app, data_app)
