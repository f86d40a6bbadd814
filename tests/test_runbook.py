"""docs/runbook.md: every `control-room ...` line of its shell code blocks resolves in the CLI's
command tree (tests/cli_lines.py): the command exists, its options exist and get their values,
the positional arguments fit. The runbook is linked from README and docs/github.md."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cli_lines import resolve, shell_calls

REPO = Path(__file__).resolve().parents[1]
RUNBOOK = REPO / "docs" / "runbook.md"
FENCE = re.compile(r"^([ \t]*)```(sh|bash|shell|console)[ \t]*\n(.*?)^\1```[ \t]*$",
                   re.MULTILINE | re.DOTALL)


def shell_blocks(markdown: str) -> list[str]:
    blocks = []
    for match in FENCE.finditer(markdown):
        indent = match.group(1)
        lines = [line.removeprefix(indent) for line in match.group(3).splitlines()]
        blocks.append("\n".join(line.removeprefix("$ ") for line in lines) + "\n")
    return blocks


def test_every_command_in_the_runbook_exists_with_its_options() -> None:
    blocks = shell_blocks(RUNBOOK.read_text("utf-8"))
    calls = [resolve(argv, f"docs/runbook.md block {i}")
             for i, block in enumerate(blocks) for argv in shell_calls(block, f"block {i}")]
    paths = {" ".join(call.path) for call in calls}
    # what the runbook promises to cover, each with at least one real command line
    for needed in ("runs show", "runs cancel", "runs retry", "runs repair", "deadletters list",
                   "deadletters requeue", "datasets unblock", "verify", "migrate", "status",
                   "token create", "token revoke", "serve", "worker", "scheduler",
                   "alerts deliver", "alerts rules create", "github deliver"):
        assert needed in paths, needed
    assert len(calls) >= 40
    text = RUNBOOK.read_text("utf-8")
    assert "pg_dump" in text and "--schema=ops_private" in text and "migrate --check" in text


def test_the_block_reader_sees_indented_blocks_and_checks_them() -> None:
    doc = "x\n\n   ```sh\n   control-room runs show RUN_ID \\\n       --json\n   ```\n"
    (block,) = shell_blocks(doc)
    (argv,) = shell_calls(block, "t")
    assert resolve(argv, "t").options == {"--json"}


def test_the_runbook_is_linked() -> None:
    for doc in ("README.md", "docs/github.md"):
        assert "runbook.md" in (REPO / doc).read_text("utf-8"), doc
