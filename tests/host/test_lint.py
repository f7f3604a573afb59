"""ansible-lint (profile production, .ansible-lint at the repo root) on the role,
the playbooks and the molecule scenarios; `reuse lint` on the whole checkout.

ansible-lint installs the collection it runs in into its cache; ANSIBLE_HOME
points that at a temporary directory so no stale copy lands in ~/.ansible.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TARGETS = ["roles/frelink_kmod", "playbooks", "extensions/molecule"]


def test_ansible_lint_production(tmp_path):
    lint = BIN / "ansible-lint"
    assert lint.exists(), "ansible-lint is not installed next to %s (run scripts/bootstrap.sh)" % sys.executable
    present = [t for t in TARGETS if (REPO / t).exists()]
    assert "roles/frelink_kmod" in present and "playbooks" in present
    env = dict(os.environ, ANSIBLE_HOME=str(tmp_path / "ansible-home"), NO_COLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))
    env.pop("VIRTUAL_ENV", None)  # else ansible-lint caches inside the venv
    started = time.monotonic()
    proc = subprocess.run([str(lint), "--offline", "--profile", "production", *present],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    print("ansible-lint %s: %.0f s" % (" ".join(present), time.monotonic() - started))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


def test_reuse_lint():
    """Every file has a licence and copyright (its SPDX header or REUSE.toml), and every
    licence named has its text in LICENSES/."""
    proc = subprocess.run([str(BIN / "reuse"), "--root", str(REPO), "lint"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "compliant with version" in proc.stdout, proc.stdout
