"""The role's molecule scenarios (extensions/molecule/) on real Debian VMs.

Each scenario boots its suite's guest through the harness (create), deploys
the role (converge), runs it again expecting no change (idempotence),
restores a deleted open file and a deleted loop-mounted image with the
collection's modules (verify), reboots (side effect), checks the module is
not loaded again (verify), removes it with state=absent, and stops the VM.
The full molecule output is kept in tests/output/molecule-SUITE.log.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SEQUENCE_STEPS = 9  # actions in each scenario's test_sequence
SCENARIOS = ["bookworm", "sid"]
# the kernels beyond harness.SUITES: in make test-kernels (FRELINK_KERNELS=all) only
if os.environ.get("FRELINK_KERNELS") == "all":
    SCENARIOS += list(harness.debian.EXTRA_KERNEL_SUITES)


@pytest.mark.guest
@pytest.mark.slow
# module scope: each scenario is a work unit of its own for the parallel run (tests/conftest.py)
@pytest.mark.parametrize("suite", SCENARIOS, scope="module")
def test_molecule_scenario(suite):
    molecule = BIN / "molecule"
    if not molecule.exists():
        pytest.fail("molecule is not installed next to %s (run scripts/bootstrap.sh)" % sys.executable)
    out_dir = REPO / "tests" / "output"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / ("molecule-%s.log" % suite)
    env = dict(os.environ,
               PATH="%s:%s" % (BIN, os.environ.get("PATH", "")),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with open(log_path, "w") as log:
        # Each output line gets the elapsed time, so the log shows where the minutes go.
        proc = subprocess.Popen([str(molecule), "test", "--scenario-name", suite], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write("[%6.1f] %s" % (time.monotonic() - started, line))
            log.flush()
        proc.wait()
    elapsed = time.monotonic() - started
    print("molecule test -s %s: %.0f s (log: %s)" % (suite, elapsed, log_path))
    output = log_path.read_text()
    assert proc.returncode == 0, "molecule test -s %s failed, see %s:\n%s" % (suite, log_path, output[-6000:])
    recap = re.search(r"%s\s*: actions=(\d+)\s+successful=(\d+).*missing=(\d+)\s+failed=(\d+)" % suite, output)
    assert recap, "no scenario recap in %s" % log_path
    actions, successful, missing, failed = map(int, recap.groups())
    assert (actions, successful, missing, failed) == (SEQUENCE_STEPS, SEQUENCE_STEPS, 0, 0), recap.group(0)
    # The idempotence step really ran the role a second time without changes.
    assert "idempotence: Executed: Successful" in output
