"""Export is quiet by default: the libraries' tracer warnings and notices only with -v."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.integration
def test_export_prints_one_line_unless_verbose(tmp_path):
    def run(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "ortrefine", "export", "tiny:llama", str(tmp_path / "b"), "--overwrite", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})

    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert "Warning" not in quiet.stderr and "Found different candidate" not in quiet.stderr + quiet.stdout
    assert quiet.stdout.strip().splitlines()[-1].startswith("wrote ")
    loud = run("-v")
    assert loud.returncode == 0 and "Warning" in loud.stderr
