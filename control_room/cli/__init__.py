"""`control-room`: the command line (docs/cli.md; every setting: docs/settings.md).

One module per command group, each with its own `typer.Typer`; this module assembles them.
Imports run one way: `common` (shared options, errors, output) <- `display` <- the group
modules <- this module. A command imports the data plane (the worker, the kinds, duckdb,
deltalake, the gateway app) inside its function, so `--help` stays light.

Bad input is a one-line message on stderr and exit code 2; a failure, exit 1.
"""

from __future__ import annotations

import typer

from control_room.cli import (
    alerts,
    ask,
    connections,
    datasets,
    db,
    deadletters,
    github,
    jobs,
    mcp,
    metrics,
    runs,
    schedules,
    sensors,
    serve,
    token,
    up,
    users,
    verify,
    warehouse,
    worker,
    workspace,
)
from control_room.cli.common import HELP_MODE

app = typer.Typer(
    name="control-room",
    help="Lakehouse Control Room: the control plane's database, migrations and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=HELP_MODE,
)

# top-level commands: each module's commands join the root
for _module in (db, serve, up, worker, verify, mcp, ask):
    app.add_typer(_module.app)
app.add_typer(schedules.scheduler_app)
# command groups
app.add_typer(workspace.app, name="workspace")
app.add_typer(token.app, name="token")
app.add_typer(users.app, name="users")
app.add_typer(runs.app, name="runs")
app.add_typer(datasets.app, name="datasets")
app.add_typer(connections.app, name="connections")
app.add_typer(jobs.app, name="jobs")
app.add_typer(deadletters.app, name="deadletters")
app.add_typer(alerts.app, name="alerts")
app.add_typer(github.app, name="github")
app.add_typer(schedules.app, name="schedules")
app.add_typer(sensors.app, name="sensors")
app.add_typer(warehouse.app, name="warehouse")
app.add_typer(metrics.app, name="metrics")


def main() -> None:
    app()
