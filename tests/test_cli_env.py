"""``o2f`` sets OMP_WAIT_POLICY=PASSIVE before torch loads libgomp, unless the user chose."""

import os
import subprocess
import sys

import pytest

PROBE = ("import sys; import o2f.cli, os; print('torch' in sys.modules, "
         "os.environ['OMP_WAIT_POLICY'])")


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_wait_policy_is_set_before_torch_is_imported(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", expected]  # torch not loaded yet: libgomp will read the value
