# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What to restart to free a held deleted file: the systemd unit of a process, from its
/proc/PID/cgroup (as needrestart reads it), and one restart target per holder.

Standard library only; the parser takes text so that it can be tested on captured files.
The facts (enrich.py) and the audit (plugins/filter/audit_report.py) share restart_target().
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

_UNIT_SUFFIXES = (".service", ".scope")
_USER_MANAGER = "user@"  # user@UID.service: the units below it belong to that user's manager


def cgroup_path(cgroup_text):
    """The process's path in systemd's hierarchy: the unified one (cgroup v2, '0::'),
    else the named systemd one (v1); None when neither is there."""
    named = None
    for line in cgroup_text.splitlines():
        hierarchy, _sep, rest = line.partition(":")
        controllers, _sep, path = rest.partition(":")
        if hierarchy == "0" and not controllers and path not in ("", "/"):
            return path
        if controllers == "name=systemd":
            named = path
    return named


def unit_of(cgroup_text):
    """(unit, user_unit): the system unit holding the process (a service, a session or other
    scope, init.scope, a machine-*.scope of a VM or container) and, under a user's manager
    (user@UID.service), the user's own unit.  (None, None) outside systemd's units
    (kernel threads, the root cgroup, a hierarchy systemd does not manage)."""
    path = cgroup_path(cgroup_text)
    if not path:
        return None, None
    unit = None
    for name in path.split("/"):
        if not name.endswith(_UNIT_SUFFIXES):
            continue
        if unit is None:
            unit = name
            if not name.startswith(_USER_MANAGER):
                return unit, None
        else:
            return unit, name
    return unit, None


def restart_target(holder):
    """(kind, name): what to restart, stop or detach so that HOLDER (a facts holder entry) lets go.

    kind is 'pod' (a Kubernetes pod, by UID), 'container' (runtime and short id), 'unit' (a
    systemd unit; a user's unit as 'user@UID.service/app.service'), 'process' (no unit known:
    the command and pid), or the kernel's own holders: 'loop' (detach the device), 'swap'
    (swapoff) and 'mount' (unmount, or restart the container whose namespace has it)."""
    container = holder.get("container")
    if container:
        if container.get("pod_uid"):
            return "pod", container["pod_uid"]
        return "container", "%s %s" % (container.get("runtime", "container"), container.get("short_id", "?"))
    kind = holder.get("kind")
    if kind == "loop":
        return "loop", holder.get("device") or "?"
    if kind == "swap":
        return "swap", holder.get("path") or "swap"
    if kind == "mount":
        return "mount", holder.get("mount_point") or "?"
    unit = holder.get("unit")
    if unit:
        user_unit = holder.get("user_unit")
        return "unit", "%s/%s" % (unit, user_unit) if user_unit else unit
    return "process", "%s[%s]" % (holder.get("name") or "?", holder.get("pid", "?"))
