"""The README's settings table is the one generated from the settings models (every setting listed)."""

from __future__ import annotations

import runpy
from pathlib import Path

from mlops_operator.backends.seldon_logger_sink import SinkSettings
from mlops_operator.settings import Settings

GENERATOR = runpy.run_path(str(Path(__file__).resolve().parents[2] / "hack" / "gen-settings-table.py"))


def test_readme_settings_table_is_current():
    text = GENERATOR["README"].read_text()
    assert GENERATOR["rendered"](text) == text, "README settings table is stale: run make manifests"


def test_every_setting_is_in_the_readme():
    text = GENERATOR["README"].read_text()
    for name in Settings.model_fields:
        assert f"`MLOPS_{name.upper()}`" in text
    for name in SinkSettings.model_fields:
        assert f"`MLOPS_SELDON_LOGGER_{name.upper()}`" in text
