from lmctrack.cli import app

app()
