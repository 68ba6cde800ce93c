"""Shared fixtures of the plugin's own tests: a temporary copy of the
repository's sample packages."""

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "update-v12-to-v13.zip"


@pytest.fixture
def packages(tmp_path):
    """A temporary package folder holding the shipped sample packages."""
    dest = tmp_path / "packages"
    shutil.copytree(REPO / "packages", dest)
    return dest
