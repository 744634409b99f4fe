"""The README as a reader uses it: its commands run as printed, its examples in order."""

import os
import subprocess
import sys
from pathlib import Path

import livestream_api

REPO = Path(livestream_api.__file__).resolve().parent


def test_tests_print_no_warnings():
    """A warning at the end of every run trains people to ignore the next one."""
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         str(REPO / 'tests' / 'test_health.py')],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'warning' not in result.stdout.splitlines()[-1], result.stdout
