# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which container a process belongs to, from its /proc/PID/cgroup.

Standard library only; the parser takes text so that it can be tested on
captured files.  Recognised: Docker, Podman (libpod), containerd and CRI-O,
and Kubernetes pods (the pod UID from the kubepods hierarchy), with cgroup v1
and v2 paths and the systemd and cgroupfs drivers.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

_ID = r"([0-9a-f]{64})"
_RUNTIMES = (
    ("podman", re.compile(r"libpod-(?:conmon-)?" + _ID)),
    ("containerd", re.compile(r"cri-containerd-" + _ID)),
    ("cri-o", re.compile(r"crio-(?:conmon-)?" + _ID)),
    ("docker", re.compile(r"docker[-/]" + _ID)),
    ("containerd", re.compile(r"/kubepods/[^/\n]+/pod[0-9a-f-]+/" + _ID)),
)
# systemd driver: kubepods-besteffort-pod<uid with _>.slice; cgroupfs: /kubepods/besteffort/pod<uid>/
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def container_of(cgroup_text):
    """{"runtime", "id", "short_id"[, "pod_uid"]} for a process in a container, else None."""
    for runtime, pattern in _RUNTIMES:
        match = pattern.search(cgroup_text)
        if match:
            found = {"runtime": runtime, "id": match.group(1), "short_id": match.group(1)[:12]}
            pod = _POD.search(cgroup_text)
            if "kubepods" in cgroup_text and pod:
                found["pod_uid"] = pod.group(1).replace("_", "-")
            return found
    return None
