"""Run the frelink_kmod role (or any playbook) against a harness guest with ansible-playbook.

Shared by the guest tests of the role (test_role_failures, test_role_upgrade). Not a
test module: pytest puts tests/guest on sys.path, so `from role_run import run_role`.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

ROLE_PLAYBOOK = """\
- name: Role frelink_kmod
  hosts: all
  gather_facts: false
  roles:
    - role: frelink.frelink.frelink_kmod
"""


def run_playbook(guest, tmp_path, text, extra_vars=None, name="play.yml", timeout=1800):
    """ansible-playbook TEXT against GUEST; (CompletedProcess, stdout + stderr)."""
    playbook = Path(tmp_path) / name
    playbook.write_text(text)
    argv = [str(BIN / "ansible-playbook"), "-i", str(guest.inventory_path()), str(playbook)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_PIPELINING="1", ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False")
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    print("%s %s: rc=%d in %.0f s" % (name, extra_vars or "", proc.returncode, time.monotonic() - started))
    return proc, proc.stdout + proc.stderr


def run_role(guest, tmp_path, **extra_vars):
    """The role with EXTRA_VARS; (CompletedProcess, stdout + stderr)."""
    return run_playbook(guest, tmp_path, ROLE_PLAYBOOK, extra_vars, name="role.yml")


def recap(output, host="guest"):
    """The PLAY RECAP counters of HOST as a dict of ints (ok, changed, failed, ...)."""
    match = re.search(r"^%s\s+:\s+(.*)$" % re.escape(host), output, re.MULTILINE)
    assert match, "no PLAY RECAP line for %s in:\n%s" % (host, output)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def one_line(text):
    """Ansible wraps long messages; compare on collapsed whitespace."""
    return " ".join(text.replace("\\n", " ").split())
