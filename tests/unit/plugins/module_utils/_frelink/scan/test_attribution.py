# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What to restart: the systemd unit of a holder from /proc/PID/cgroup, and the target of
each kind of holder (attribution.py), on captured input."""

import pytest

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import attribution

# /proc/PID/cgroup as Debian's systemd (cgroup v2) and an older hybrid host write it
CGROUPS = [
    ("0::/system.slice/nginx.service\n", ("nginx.service", None)),
    ("0::/init.scope\n", ("init.scope", None)),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", ("session-3.scope", None)),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service\n",
     ("user@1000.service", "syncthing.service")),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", ("user@1000.service", "init.scope")),
    ("0::/machine.slice/machine-qemu\\x2d1\\x2ddebian.scope/libvirt/emulator\n",
     ("machine-qemu\\x2d1\\x2ddebian.scope", None)),
    ("0::/system.slice/docker-" + "ab" * 32 + ".scope\n", ("docker-" + "ab" * 32 + ".scope", None)),
    ("0::/\n", (None, None)),
    ("", (None, None)),
    ("12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/system.slice/cron.service\n",
     ("cron.service", None)),
    ("4:memory:/x\n1:name=systemd:/system.slice/ssh.service\n0::/\n", ("ssh.service", None)),
]


@pytest.mark.parametrize("text, expected", CGROUPS)
def test_unit_of(text, expected):
    assert attribution.unit_of(text) == expected


def test_restart_targets():
    pod = {"runtime": "containerd", "id": "c" * 64, "short_id": "c" * 12, "pod_uid": "1234-5678"}
    assert attribution.restart_target({"kind": "fd", "unit": "x.scope", "container": pod}) == ("pod", "1234-5678")
    ctr = {"runtime": "podman", "id": "d" * 64, "short_id": "d" * 12}
    assert attribution.restart_target({"kind": "mmap", "container": ctr}) == ("container", "podman " + "d" * 12)
    assert attribution.restart_target({"kind": "fd", "unit": "a.service"}) == ("unit", "a.service")
    assert attribution.restart_target({"kind": "fd", "unit": "user@1.service", "user_unit": "b.service"}) == (
        "unit", "user@1.service/b.service")
    assert attribution.restart_target({"kind": "fd", "name": "sleep", "pid": 7}) == ("process", "sleep[7]")
    assert attribution.restart_target({"kind": "loop", "device": "/dev/loop3"}) == ("loop", "/dev/loop3")
    assert attribution.restart_target({"kind": "mount", "mount_point": "/etc/app.conf"}) == ("mount", "/etc/app.conf")
