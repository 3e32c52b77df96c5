"""Write (or check) the README's settings table, generated from the settings models (the operator's
and the Seldon request-logger sink's).

    python hack/gen-settings-table.py write|check
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlops_operator.backends.seldon_logger_sink import SinkSettings
from mlops_operator.settings import Settings, settings_table

MODELS = (Settings, SinkSettings)

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings-table: generated from operator/mlops_operator/settings.py by `make manifests` -->\n"
END = "<!-- settings-table:end -->\n"


def rendered(text: str) -> str:
    """README text with the table between the markers replaced by the generated one."""
    head, _, rest = text.partition(BEGIN)
    _, found, tail = rest.partition(END)
    if not found:
        raise SystemExit(f"{README}: settings-table markers not found")
    return head + BEGIN + settings_table(*MODELS) + END + tail


def main(mode: str) -> int:
    text = README.read_text()
    wanted = rendered(text)
    if mode == "write":
        README.write_text(wanted)
        print(f"[gen-settings-table] wrote the settings table in {README}")
        return 0
    if wanted != text:
        print(f"{README}: the settings table is stale; run make manifests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "check"))
