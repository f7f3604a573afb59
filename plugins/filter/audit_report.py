# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: audit_report
short_description: The fleet audit's data model from every host's frelink_facts result
version_added: "0.2.0"
description:
  - Turns the results registered from M(frelink.frelink.frelink_facts) on many hosts into the one data
    model that C(playbooks/audit.yml) renders as HTML, Markdown, CSV (with P(frelink.frelink.audit_csv#filter))
    and JSON, so that they cannot disagree.
  - "Every orphan has a class (facts C(class)): C(lost) (its data dies with its holders), C(kernel) (held only by a
    loop device, swap or a mount: its data is just as unique), C(replaced) (code or package content whose path
    holds a newer file: a restart frees it, nothing to restore) and C(deliberate) (unlinked on purpose by its
    program). The headline (C(totals.orphans), C(totals.allocated), C(orphans)) is what is at risk: C(lost) and
    C(kernel)."
  - "C(restart) answers what to restart and what it would free: one row per host and per set of restart targets
    (systemd unit, container, pod, or the kernel's loop device, mount or swap; see the facts' C(unit)), with the
    orphans and allocated bytes that restarting all of that row's targets frees, by class. Each orphan is in
    exactly one row, so the rows add up to the totals. A row whose orphans include C(lost) ones says so: restarting
    before restoring them destroys their data."
  - "C(reclaimable) answers what M(frelink.frelink.frelink_reclaim) would give back without restarting anything:
    the orphans that pass its default safety rule (one definition, C(plugins/module_utils/_frelink/reclaim/rules.py);
    class C(lost), not mapped, not an executable, no kernel holder, every writer write-only or appending) and their
    allocated bytes, per orphan (C(reclaimable), C(reclaimable_allocated)), per host, per filesystem and in the
    totals. The facts must list every orphan (C(limit=0), as C(playbooks/audit.yml) asks)."
  - Needs only Python's standard library on the controller.
options:
  _input:
    description: The inventory names of the audited hosts (C(ansible_play_hosts_all)).
    type: list
    elements: str
    required: true
  hostvars:
    description: C(hostvars); each host's result is read from its variable O(result_var).
    type: dict
    required: true
  result_var:
    description: The name under which each host registered the frelink_facts result.
    type: str
    default: frelink_audit_scan
  top_holders:
    description: How many holders C(top_holders) lists, the ones pinning the most first.
    type: int
    default: 10
  generated:
    description: The time of the report, as text.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Gather the report data
  ansible.builtin.set_fact:
    frelink_audit: "{{ ansible_play_hosts_all | frelink.frelink.audit_report(hostvars, top_holders=20) }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
_value:
  description:
    - The report's data, as C(audit.json) stores it.
    - "C(totals): C(hosts), C(hosts_failed), C(hosts_with_orphans) (with orphans at risk), C(orphans) and
      C(allocated) (at risk: lost and kernel), C(size), C(loop_swap), C(replaced) and C(replaced_allocated),
      C(deliberate) and C(deliberate_allocated), C(pinned) (every class but deliberate), C(by_class), C(reclaimable)
      and C(reclaimable_allocated), each with C(*_human) forms of the byte counts."
    - "C(hosts) (C(name), C(status) ok, partial, failed or unreachable, C(reason), C(orphans), C(allocated),
      C(replaced), C(replaced_allocated), C(pinned), C(deliberate), C(loop_swap), C(reclaimable),
      C(reclaimable_allocated)), C(filesystems) (with C(reclaimable) and C(reclaimable_allocated)), C(top_holders),
      C(restart), C(orphans) (at risk), C(replaced), C(loop_swap), C(deliberate)."
  type: dict
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.formatters import bytes_to_human

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.rules import reclaimable
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.attribution import restart_target
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.classes import AT_RISK, CLASSES, KERNEL_KINDS


def human(size):
    """Bytes as ansible's human_readable filter shows them."""
    return bytes_to_human(size or 0)


def _class_of(orphan):
    """The facts' class; for facts of an older module, what its fields allow."""
    klass = orphan.get("class")
    if klass in CLASSES:
        return klass
    if orphan.get("deliberate"):
        return "deliberate"
    kinds = set(h.get("kind") for h in orphan.get("holders") or [])
    return "kernel" if kinds and kinds <= KERNEL_KINDS else "lost"


def _holder_label(holder):
    if holder.get("kind") in KERNEL_KINDS:
        where = holder.get("device") or holder.get("mount_point") or holder.get("name") or holder.get("kind")
        mounts = holder.get("mounts") or []
        return ("%s on %s" % (where, ", ".join(mounts)) if mounts else str(where)).strip()
    label = "%s[%s]" % (holder.get("name") or "?", holder.get("pid", "?"))
    if holder.get("user") is not None:
        label += " " + str(holder["user"])
    if holder.get("unit"):
        label += " (%s)" % holder["unit"]
    return label


_ACTIONS = {
    "pod": "delete pod %s (its controller re-creates it)",
    "container": "restart container %s",
    "loop": "unmount and detach %s (losetup -d)",
    "mount": "unmount %s, or restart the container that has it",
    "swap": "swapoff %s",
    "process": "restart %s (in no systemd unit)",
}


def action(kind, name):
    """What an operator types or does for one restart target."""
    if kind == "unit":
        unit, _sep, user_unit = name.partition("/")
        if user_unit:
            return "systemctl --user restart %s (as the user of %s)" % (user_unit, unit)
        if unit == "init.scope":
            return "systemctl daemon-reexec"
        if unit.startswith("session-") and unit.endswith(".scope"):
            return "end login session %s (loginctl terminate-session %s)" % (unit[8:-6], unit[8:-6])
        return "systemctl restart %s" % unit
    return _ACTIONS.get(kind, "%s %%s" % kind) % name


def _targets(orphan):
    listed = orphan.get("restart_targets")
    if listed:
        return sorted((t.get("kind"), t.get("name")) for t in listed)
    return sorted(set(restart_target(h) for h in orphan.get("holders") or []))


def _restore_text(klass, orphan, targets):
    if klass == "deliberate":
        return "nothing to restore (unlinked on purpose)"
    if klass == "replaced":
        return "nothing to restore: restart (%s)" % ", ".join(name for _kind, name in targets)
    restore = orphan.get("restore") or {}
    return "relink" if restore.get("relink") else ("reflink" if restore.get("reflink") else "copy")


def _host_status(result, facts):
    if result.get("unreachable"):
        return "unreachable", result.get("msg") or ""
    if result.get("failed") or facts is None:
        return "failed", result.get("msg") or "no frelink facts returned"
    scan = facts.get("scan") or {}
    if not scan.get("complete", True):
        return "partial", "; ".join(scan.get("warnings") or [])
    return "ok", ""


def _as_int(value):
    return int(value) if value is not None else 0


class _Fleet:
    def __init__(self):
        self.hosts = []
        self.rows = []  # one per orphan
        self.filesystems = {}
        self.holders = {}
        self.restart = {}

    def add_host(self, name, result):
        if not isinstance(result, Mapping):
            result = {}
        facts = (result.get("ansible_facts") or {}).get("frelink")
        status, reason = _host_status(result, facts)
        host = {"name": name, "status": status, "reason": str(reason).strip(), "orphans": 0, "allocated": 0,
                "replaced": 0, "replaced_allocated": 0, "pinned": 0, "deliberate": 0, "loop_swap": 0,
                "reclaimable": 0, "reclaimable_allocated": 0}
        for orphan in (facts or {}).get("orphans") or []:
            self.add_orphan(host, orphan)
        self.hosts.append(host)

    def add_orphan(self, host, orphan):
        klass = _class_of(orphan)
        allocated = _as_int(orphan.get("allocated"))
        holders = orphan.get("holders") or []
        kinds = sorted(set(h.get("kind") for h in holders if h.get("kind")))
        targets = _targets(orphan)
        size = orphan.get("size") if orphan.get("size") is not None else orphan.get("size_hint")
        deliberate = orphan.get("deliberate") or {}
        row = {
            "host": host["name"],
            "class": klass,
            "path": orphan.get("path") or "",
            "type": orphan.get("type") or "file",
            "size": int(size) if size is not None else None,
            "allocated": allocated,
            "size_human": human(size) if size is not None else "unknown",
            "allocated_human": human(allocated),
            "owner": orphan.get("owner") if orphan.get("owner") is not None else orphan.get("uid", ""),
            "mtime": orphan.get("mtime", ""),
            "device": orphan.get("device") or "",
            "ino": orphan.get("ino", ""),
            "fstype": orphan.get("fstype") or "",
            "mount_point": orphan.get("mount_point") or "",
            "kinds": kinds,
            "holders": ["%s: %s" % (h.get("kind"), _holder_label(h)) for h in holders],
            "loop_or_swap": bool(set(kinds) & {"loop", "swap"}),
            "path_free": bool(orphan.get("path_free", False)),
            "package": orphan.get("package") or "",
            "restart": [{"kind": kind, "name": name} for kind, name in targets],
            "deliberate": deliberate.get("idiom", ""),
            "why": deliberate.get("why", ""),
            "restore": _restore_text(klass, orphan, targets),
            # what frelink_reclaim truncates by default (reclaim/rules.py, the module's own rule)
            "reclaimable": reclaimable(dict(orphan, **{"class": klass})),
        }
        row["reclaimable_allocated"] = allocated if row["reclaimable"] else 0
        self.rows.append(row)
        if klass == "deliberate":
            host["deliberate"] += 1
            return
        host["pinned"] += allocated
        if row["reclaimable"]:
            host["reclaimable"] += 1
            host["reclaimable_allocated"] += allocated
        if klass in AT_RISK:
            host["orphans"] += 1
            host["allocated"] += allocated
            if row["loop_or_swap"]:
                host["loop_swap"] += 1
        else:
            host["replaced"] += 1
            host["replaced_allocated"] += allocated
        fs = self.filesystems.setdefault((host["name"], row["mount_point"]), {
            "host": host["name"], "mount_point": row["mount_point"], "fstype": row["fstype"],
            "device": row["device"], "orphans": 0, "allocated": 0, "at_risk_allocated": 0, "replaced_allocated": 0,
            "reclaimable": 0, "reclaimable_allocated": 0})
        fs["orphans"] += 1
        fs["allocated"] += allocated
        fs["reclaimable"] += 1 if row["reclaimable"] else 0
        fs["reclaimable_allocated"] += row["reclaimable_allocated"]
        fs["at_risk_allocated" if klass in AT_RISK else "replaced_allocated"] += allocated
        for holder in holders:
            key = (host["name"], _holder_label(holder))
            top = self.holders.setdefault(key, {"host": key[0], "holder": key[1], "kind": holder.get("kind"),
                                                "orphans": 0, "allocated": 0})
            top["orphans"] += 1
            top["allocated"] += allocated
        key = (host["name"], tuple(targets))
        restart = self.restart.setdefault(key, {
            "host": host["name"], "targets": [{"kind": kind, "name": name, "action": action(kind, name)}
                                              for kind, name in targets],
            "orphans": 0, "allocated": 0,
            "by_class": dict((name, 0) for name in CLASSES if name != "deliberate"),
            "allocated_by_class": dict((name, 0) for name in CLASSES if name != "deliberate")})
        restart["orphans"] += 1
        restart["allocated"] += allocated
        restart["by_class"][klass] += 1
        restart["allocated_by_class"][klass] += allocated

    def report(self, top_holders, generated):
        def by_size(rows):
            return sorted(rows, key=lambda r: (-r["allocated"], r["host"], r["path"]))

        def humanised(rows, *keys):
            for row in rows:
                for key in keys:
                    row[key + "_human"] = human(row[key])
            return rows

        at_risk = by_size(r for r in self.rows if r["class"] in AT_RISK)
        replaced = by_size(r for r in self.rows if r["class"] == "replaced")
        deliberate = by_size(r for r in self.rows if r["class"] == "deliberate")
        by_class = {}
        for name in CLASSES:
            rows = [r for r in self.rows if r["class"] == name]
            allocated = sum(r["allocated"] for r in rows)
            by_class[name] = {"orphans": len(rows), "allocated": allocated, "allocated_human": human(allocated)}
        restart = sorted(self.restart.values(), key=lambda r: (-r["allocated"], r["host"],
                                                               [t["name"] for t in r["targets"]]))
        for row in restart:
            row["loses_data"] = row["by_class"].get("lost", 0) > 0
        totals = {
            "hosts": len(self.hosts),
            "hosts_failed": sum(1 for h in self.hosts if h["status"] in ("failed", "unreachable")),
            "hosts_with_orphans": sum(1 for h in self.hosts if h["orphans"]),
            "orphans": len(at_risk),
            "loop_swap": sum(1 for r in at_risk if r["loop_or_swap"]),
            "allocated": by_class["lost"]["allocated"] + by_class["kernel"]["allocated"],
            "size": sum(r["size"] for r in at_risk if r["size"] is not None),
            "replaced": len(replaced),
            "replaced_allocated": by_class["replaced"]["allocated"],
            "deliberate": len(deliberate),
            "deliberate_allocated": by_class["deliberate"]["allocated"],
            "restart_rows": len(restart),
            "by_class": by_class,
            "reclaimable": sum(1 for r in self.rows if r["reclaimable"]),
            "reclaimable_allocated": sum(r["reclaimable_allocated"] for r in self.rows),
        }
        totals["pinned"] = totals["allocated"] + totals["replaced_allocated"]
        humanised([totals], "allocated", "replaced_allocated", "deliberate_allocated", "pinned", "reclaimable_allocated")
        return {
            "generated": generated,
            "totals": totals,
            "hosts": humanised(self.hosts, "allocated", "replaced_allocated", "pinned", "reclaimable_allocated"),
            "filesystems": humanised(sorted(self.filesystems.values(), key=lambda f: (-f["allocated"], f["host"],
                                                                                      f["mount_point"])),
                                     "allocated", "at_risk_allocated", "replaced_allocated", "reclaimable_allocated"),
            "top_holders": humanised(sorted(self.holders.values(), key=lambda h: (-h["allocated"], h["host"],
                                                                                  h["holder"]))[:top_holders],
                                     "allocated"),
            "restart": humanised(restart, "allocated"),
            "orphans": at_risk,
            "replaced": replaced,
            "loop_swap": [r for r in at_risk if r["loop_or_swap"]],
            "deliberate": deliberate,
        }


def audit_report(hosts, hostvars, result_var="frelink_audit_scan", top_holders=10, generated=""):
    """The audit's data model (see DOCUMENTATION)."""
    if isinstance(hosts, (str, bytes)) or not hasattr(hosts, "__iter__"):
        raise AnsibleFilterError("audit_report: the input must be the list of audited hosts "
                                 "(ansible_play_hosts_all), got %s" % type(hosts).__name__)
    try:
        top_holders = int(top_holders)
    except (TypeError, ValueError):
        raise AnsibleFilterError("audit_report: top_holders must be a number, got %r" % (top_holders,)) from None
    fleet = _Fleet()
    for name in sorted(hosts):
        try:
            variables = hostvars[name]
        except KeyError:
            variables = {}
        fleet.add_host(name, variables.get(result_var) if hasattr(variables, "get") else None)
    return fleet.report(top_holders, str(generated))


class FilterModule(object):
    """frelink's audit filters."""

    def filters(self):
        return {"audit_report": audit_report}
