from pathlib import Path

import pytest

from floatbridge.configdoc import render

pytestmark = pytest.mark.unit


def test_committed_configuration_doc_lists_every_setting_as_the_code_defines_it() -> None:
    committed = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert committed.strip() == render().strip(), "run: python -m floatbridge.configdoc > docs/configuration.md"
