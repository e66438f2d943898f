"""The README stays true to the code: its commands, its configuration table, .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

from segstream.settings import Settings

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_configuration_table_lists_every_setting() -> None:
    for name, field in Settings.model_fields.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `SEGSTREAM_{name.upper()}` |")), None)
        assert row is not None, f"README lacks SEGSTREAM_{name.upper()}"
        value = field.get_default(call_default_factory=True)
        default = "unset" if value is None else f"`{value}`"
        assert f"| {default} |" in row, row


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command.strip()
    assert any("segstream demo" in b for b in blocks)
