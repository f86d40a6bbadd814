"""GitHub: the PR gate's job summary and step outputs (`summary`), and commit statuses of gate
runs (`statuses`). docs/github.md."""
