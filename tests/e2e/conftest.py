from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


class Cli:
    """Runs ``python -m scheduler`` as a user would, with its own config file."""

    def __init__(self, workdir: Path, db_url: str) -> None:
        self.workdir = workdir
        self.config = workdir / "config.yaml"
        self.config.write_text(f"database:\n  url: {db_url}\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}
        self.env["PYTHONPATH"] = str(REPO_ROOT)

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None, **env: str):
        result = subprocess.run(
            [sys.executable, "-m", "scheduler", "--config", str(self.config), *args],
            cwd=self.workdir,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}")
        return result


@pytest.fixture
def cli(tmp_path, db_url) -> Cli:
    return Cli(tmp_path, db_url)
