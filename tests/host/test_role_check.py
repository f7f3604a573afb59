# -*- coding: utf-8 -*-
"""The frelink_kmod role in check mode on this host (no module loaded, no DKMS build):
booleans given as `-e key=false`, the way templates/signing_steps.j2 tells users to type
them, are read as booleans; check mode predicts the build and the load and writes nothing.
The real build and load are proven in guests (molecule, test_role_failures)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from orphans import collection_path, require_root

BIN = Path(sys.executable).parent
COLLECTIONS = collection_path()
PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: frelink.frelink.frelink_kmod
"""
BOOT_FILE = "/etc/modules-load.d/frelink.conf"


def run_check(tmp_path, *cli_vars):
    play = tmp_path / "role.yml"
    play.write_text(PLAY)
    argv = [str(BIN / "ansible-playbook"), "--check", "--diff", str(play)]
    for assignment in cli_vars:
        argv += ["-e", assignment]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return proc, proc.stdout + proc.stderr


def recap(output):
    match = re.search(r"^localhost\s+:\s+(.*)$", output, re.MULTILINE)
    assert match, output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def test_string_booleans_and_check_mode_predictions(tmp_path):
    require_root()
    if os.path.exists("/sys/module/frelink") or os.path.exists(BOOT_FILE):
        raise AssertionError("this host already has the frelink module or its boot entry")
    # install_packages=false: check mode on a host without DKMS must not ask apt either
    proc, out = run_check(tmp_path, "frelink_kmod_signature_check=false", "frelink_kmod_persistent=false",
                          "frelink_kmod_install_packages=false")
    assert proc.returncode == 0, out
    assert "Conditionals must have a boolean result" not in out
    assert "Would build and install frelink" in out and "Would load the frelink module" in out, out
    assert recap(out)["changed"] == 2, out  # the build and the load, nothing for the boot entry

    proc, out = run_check(tmp_path, "frelink_kmod_persistent=true", "frelink_kmod_install_packages=no")
    assert proc.returncode == 0, out
    assert recap(out)["changed"] == 3, out  # and the boot entry, shown as a diff
    assert "+frelink" in out and BOOT_FILE in out, out

    assert not os.path.exists(BOOT_FILE), "check mode wrote the boot entry"
    assert not [name for name in os.listdir("/usr/src") if name.startswith("frelink-")], "check mode copied sources"
