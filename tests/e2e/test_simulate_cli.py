import json
import socket
import subprocess
import sys
import time
import urllib.request

from tests.conftest import REPO_ROOT


def test_simulate_runs_from_the_cli_and_serves_stats(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "simulate", "--port", str(port), "--fail-rate", "0.2"],
        cwd=tmp_path, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=1) as response:
                    stats = json.load(response)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "simulator did not start"
                time.sleep(0.2)
        assert stats["requests"] == 0 and stats["numbers_queued_more_than_once"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_simulate_refuses_a_bad_settings_file(tmp_path):
    (tmp_path / "sim.yaml").write_text("fail_rate: 0.1\nnonsense: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "scheduler", "simulate", "--config", "sim.yaml"],
        cwd=tmp_path, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "unknown simulator settings: nonsense" in result.stderr
