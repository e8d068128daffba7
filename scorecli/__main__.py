"""Run the CLI as `python -m scorecli`."""

from scorecli.cli import app

app(prog_name="scorecli")
