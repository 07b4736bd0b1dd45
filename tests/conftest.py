"""Shared test helpers: locate the golden fixtures (SASV_FIXTURES, default ../shared/fixtures)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: over ~5 s; the fast tier is -m 'not slow'")


def fixtures_root() -> Path:
    return Path(os.environ.get("SASV_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The fixtures folder; tests using it skip when it is absent."""
    root = fixtures_root()
    if not (root / "golden").is_dir():
        pytest.skip(f"golden fixtures not found at {root} (set SASV_FIXTURES)")
    return root


@pytest.fixture(scope="session")
def golden_json(fixtures):
    def load(name: str) -> dict:
        with open(fixtures / "golden" / name) as handle:
            return json.load(handle)

    return load
