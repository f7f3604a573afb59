# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: prometheus_textfile
short_description: Turn frelink_facts results into Prometheus text exposition format
version_added: "0.1.0"
description:
  - Renders the facts of M(frelink.frelink.frelink_facts) (C(ansible_facts.frelink)), or the
    registered result of that module, as metrics in the Prometheus text exposition format
    (version 0.0.4), ready to be written to a C(.prom) file for the textfile collector of
    the Prometheus node exporter (C(--collector.textfile.directory), usually
    C(/var/lib/prometheus/node-exporter) on Debian).
  - Every metric is a gauge with C(# HELP) and C(# TYPE) lines. Label values are escaped
    (backslash, double quote, line feed); mount points may contain any character.
  - "Counts and bytes: C(frelink_orphans), C(frelink_orphans_listed), C(frelink_orphans_mapped_only),
    C(frelink_pinned_bytes) (allocated bytes held by deleted files), C(frelink_apparent_bytes);
    by holder kind (label C(kind)): C(frelink_orphans_by_kind), C(frelink_pinned_bytes_by_kind);
    by filesystem (labels C(devno), the C(major:minor) device number, and C(fstype) and C(mountpoint),
    which mean what they mean for the node exporter's C(node_filesystem_*) metrics): C(frelink_filesystem_orphans),
    C(frelink_filesystem_pinned_bytes), C(frelink_filesystem_free_bytes)."
  - "What M(frelink.frelink.frelink_reclaim) would give back without a restart, by its default rule (one definition,
    C(plugins/module_utils/_frelink/reclaim/rules.py): class C(lost), not mapped, not an executable, no kernel
    holder, every writer write-only or appending): C(frelink_reclaimable_orphans), C(frelink_reclaimable_bytes) and
    per filesystem C(frelink_filesystem_reclaimable_bytes), over the listed orphans (exact with C(limit=0), as
    C(playbooks/audit.yml) asks)."
  - "The scan itself: C(frelink_scan_success) (V(0) when the module failed and returned no facts; then
    it is the only metric besides the timestamp), C(frelink_scan_complete) (V(0) when the scan was partial,
    for example without root), C(frelink_scan_timestamp_seconds), C(frelink_scan_processes),
    C(frelink_scan_fds), C(frelink_scan_warnings)."
  - An orphan held by several kinds (for example an fd and a mapping) counts under each of them,
    so the series of C(frelink_orphans_by_kind) may add up to more than C(frelink_orphans).
  - C(frelink_pinned_bytes_by_kind) comes from the module's C(summary.bytes_by_kind), over every orphan (for
    facts of an older module without it, over the listed ones, a lower bound when the list is truncated).
  - "The headline C(frelink_orphans) and C(frelink_pinned_bytes) count what is at risk: the facts' classes C(lost)
    and C(kernel). Every class is in C(frelink_orphans_by_class) and C(frelink_pinned_bytes_by_class) (label
    C(class): lost, replaced, deliberate, kernel). Orphans that their program unlinked on purpose and keeps using
    (facts C(deliberate): POSIX semaphores such as Python's multiprocessing makes, well-known shared memory, InnoDB
    temporary files) are also shown as C(frelink_orphans_deliberate) (label C(idiom)) and
    C(frelink_pinned_bytes_deliberate). For facts of an older module without classes, the headline leaves out only
    the deliberate ones. The per-kind and per-filesystem series count every orphan."
  - "Containers: the per-kind and per-filesystem series (C(frelink_orphans_by_kind), C(frelink_pinned_bytes_by_kind),
    C(frelink_filesystem_orphans), C(frelink_filesystem_pinned_bytes)) without a C(container) label are the host's:
    orphans that a process outside containers holds (by that kind), or the kernel (loop, swap, a mount outside
    containers). Orphans that processes (or mounts) in a container hold get series of their own with C(container)
    set to the container's C(short_id) from the facts (the first 12 hex digits of its id, as C(docker ps) shows it).
    A process (or a mount) counts as in a container when the facts give its holder a C(container) (another mount
    namespace and a Docker, Podman, containerd or CRI-O cgroup); one in another mount namespace without a
    recognised container is the host's."
  - "An orphan counts under every place that holds it: under the host and each container whose processes hold it
    (per kind: by a holder of that kind), as it counts under each kind. Summed over C(container) (PromQL
    C(sum without) naming it), a series therefore gives the old total unless an orphan is held from several places
    (a file shared by the host and a container, or by two containers), which it counts once per place. The
    headline C(frelink_orphans) and C(frelink_pinned_bytes) have no C(container) label and count each orphan once,
    wherever it is held. C(frelink_filesystem_free_bytes) has no C(container) label."
  - "The split needs the holders, which only the listed orphans show: it is exact when every orphan is listed
    (C(limit=0), as C(playbooks/audit.yml) asks) and no listed orphan has more holders than are listed
    (C(holder_count)). Otherwise the container series count the listed orphans by their listed holders and
    the rest stays in the host's series."
  - Needs only Python's standard library on the controller.
options:
  _input:
    description:
      - The value of C(ansible_facts.frelink), or the whole result registered from
        M(frelink.frelink.frelink_facts) (a failed result gives C(frelink_scan_success 0)).
    type: dict
    required: true
  timestamp:
    description:
      - Time of the scan for C(frelink_scan_timestamp_seconds), in seconds since the epoch.
      - By default the time the filter runs on the controller (in C(playbooks/audit.yml) a few
        seconds after the scan, once the report is written).
    type: float
  prefix:
    description:
      - Prefix of every metric name.
    type: str
    default: frelink_
notes:
  - No sample carries a timestamp, as the textfile collector requires; the time of the scan is
    the value of C(frelink_scan_timestamp_seconds).
  - The text ends with a line feed, which the textfile collector needs.
seealso:
  - module: frelink.frelink.frelink_facts
  - name: Prometheus text exposition format
    description: The format this filter writes.
    link: https://prometheus.io/docs/instrumenting/exposition_formats/
  - name: node exporter textfile collector
    description: How the node exporter reads C(.prom) files.
    link: https://github.com/prometheus/node_exporter#textfile-collector
"""

EXAMPLES = r"""
- name: Note when the scan starts
  ansible.builtin.set_fact:
    frelink_scan_started: "{{ now().timestamp() }}"

- name: Scan for deleted files that are still held
  frelink.frelink.frelink_facts:
  become: true

- name: Publish the metrics to the node exporter
  ansible.builtin.copy:
    content: "{{ ansible_facts.frelink | frelink.frelink.prometheus_textfile(timestamp=frelink_scan_started | float) }}"
    dest: /var/lib/prometheus/node-exporter/frelink.prom
    mode: "0644"
  become: true
  vars:
    # copy renames its upload into place: one atomic rename only when the upload is on
    # the same filesystem (otherwise a temporary *.prom is written there first)
    ansible_remote_tmp: /var/lib/prometheus/node-exporter/.frelink-tmp

- name: From a registered result (a failed scan gives frelink_scan_success 0)
  ansible.builtin.copy:
    content: "{{ scan_result | frelink.frelink.prometheus_textfile }}"
    dest: /var/lib/prometheus/node-exporter/frelink.prom
    mode: "0644"
  become: true

# With one deleted log of 3 MiB held by an fd, the text has, among others:
#   # HELP frelink_pinned_bytes Allocated bytes of deleted files that are still held (space not freed).
#   # TYPE frelink_pinned_bytes gauge
#   frelink_pinned_bytes 3145728
#   frelink_orphans_by_kind{kind="fd"} 1
#   frelink_filesystem_pinned_bytes{devno="254:0",fstype="ext4",mountpoint="/"} 3145728
#   frelink_scan_complete 1
# and when a process in Docker container 3f2a9c0d1e4b... also holds a deleted 1 MiB file on /:
#   frelink_orphans 2
#   frelink_orphans_by_kind{kind="fd"} 1
#   frelink_orphans_by_kind{kind="fd",container="3f2a9c0d1e4b"} 1
#   frelink_filesystem_pinned_bytes{devno="254:0",fstype="ext4",mountpoint="/"} 3145728
#   frelink_filesystem_pinned_bytes{devno="254:0",fstype="ext4",mountpoint="/",container="3f2a9c0d1e4b"} 1048576
"""

RETURN = r"""
_value:
  description:
    - The metrics in the Prometheus text exposition format, one C(# HELP) and one C(# TYPE) line
      before the samples of each metric, ending with a line feed.
  type: string
"""

import math
import re
import time

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.rules import reclaimable
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.classes import AT_RISK, CLASSES

KINDS = ("fd", "mmap", "cwd", "root", "exe", "loop", "swap", "mount")
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def escape_label_value(value):
    """A label value as the text format wants it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text):
    """HELP text: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    def __init__(self, prefix):
        self.prefix = prefix
        self.lines = []

    def gauge(self, name, help_text, samples):
        """samples: list of (labels as a list of (name, value) pairs, number); None numbers are left out."""
        name = self.prefix + name
        self.lines.append("# HELP %s %s" % (name, escape_help(help_text)))
        self.lines.append("# TYPE %s gauge" % name)
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join('%s="%s"' % (key, escape_label_value(_text(val))) for key, val in labels)
            self.lines.append("%s%s %s" % (name, "{%s}" % text if text else "", format_value(value)))

    def text(self):
        return "\n".join(self.lines) + "\n"


def _text(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


def _number(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnsibleFilterError("prometheus_textfile: %s must be a number, got %r" % (what, value))
    return value


def container_name(container):
    """The label value of a holder's container: its short id (frelink_facts' container.short_id)."""
    if not isinstance(container, Mapping):
        raise AnsibleFilterError("prometheus_textfile: a holder's container must be a dict, got %r" % (container,))
    name = container.get("short_id") or (container.get("id") or "")[:12]
    if not isinstance(name, str) or not name:
        raise AnsibleFilterError("prometheus_textfile: a holder's container has no short_id: %r" % (container,))
    return name


class _ContainerSplit:
    """Where the listed orphans are held: the host (None) or containers (short ids).

    A place holds an orphan by a kind when one of the orphan's listed holders of that kind is
    there; holders without a container (processes outside containers, loop and swap) are the
    host. by_kind[(place, kind)] and by_device[(place, device)] are (count, allocated bytes)
    over the listed orphans held there; contained_only_* are the same for the orphans that no
    host holder holds (by that kind, or at all): what the host's series leave out of the
    summary's totals.
    """

    def __init__(self, orphans):
        self.by_kind = {}
        self.by_device = {}
        self.contained_only_by_kind = {}
        self.contained_only_by_device = {}
        self.fs_labels = {}
        names = set()
        for orphan in orphans:
            allocated = _number(orphan.get("allocated"), "orphans[].allocated") or 0
            places_by_kind = {}
            for holder in orphan.get("holders") or []:
                kind = holder.get("kind")
                if not kind:
                    continue
                place = container_name(holder["container"]) if holder.get("container") else None
                places_by_kind.setdefault(kind, set()).add(place)
            places = set()
            for kind, kind_places in places_by_kind.items():
                places |= kind_places
                for place in kind_places:
                    self._add(self.by_kind, (place, kind), allocated)
                if None not in kind_places:
                    self._add(self.contained_only_by_kind, kind, allocated)
            device = orphan.get("device")
            for place in places:
                self._add(self.by_device, (place, device), allocated)
            self.fs_labels.setdefault(device, {
                "device": device, "fstype": orphan.get("fstype"), "mount_point": orphan.get("mount_point")})
            if places and None not in places:
                self._add(self.contained_only_by_device, device, allocated)
            names |= places - {None}
        self.containers = sorted(names)

    @staticmethod
    def _add(table, key, allocated):
        count, total = table.get(key, (0, 0))
        table[key] = (count + 1, total + allocated)

    def kinds_beyond(self, kinds):
        return sorted(set(kind for _place, kind in self.by_kind) - set(kinds))


def _minus(total, part):
    """A total of the summary less what containers alone hold (None stays None: no sample)."""
    return None if total is None else total - part


def _facts_of(data):
    """(facts or None) from ansible_facts.frelink or a registered frelink_facts result."""
    if not isinstance(data, Mapping):
        raise AnsibleFilterError("prometheus_textfile: the input must be ansible_facts.frelink or the result "
                                 "registered from frelink.frelink.frelink_facts, got %s" % type(data).__name__)
    if "summary" in data and "scan" in data:
        return data
    if "ansible_facts" in data or data.get("failed") or data.get("unreachable") or "msg" in data:
        facts = (data.get("ansible_facts") or {}).get("frelink")
        if facts is not None and not data.get("failed"):
            return _facts_of(facts)
        return None
    raise AnsibleFilterError("prometheus_textfile: the input has neither summary and scan (ansible_facts.frelink) "
                             "nor ansible_facts (a registered frelink_facts result)")


def prometheus_textfile(data, timestamp=None, prefix="frelink_"):
    """The Prometheus text exposition of frelink_facts output (see DOCUMENTATION)."""
    if not isinstance(prefix, str) or (prefix and not _NAME.match(prefix)):
        raise AnsibleFilterError("prometheus_textfile: prefix must be a valid metric name start, got %r" % (prefix,))
    if timestamp is None:
        timestamp = time.time()
    try:
        timestamp = float(timestamp)
    except (TypeError, ValueError):
        raise AnsibleFilterError("prometheus_textfile: timestamp must be seconds since the epoch, got %r"
                                 % (timestamp,)) from None
    facts = _facts_of(data)
    out = _Exposition(prefix)
    out.gauge("scan_success", "1 if frelink_facts returned facts for this host, 0 if the scan failed.",
              [([], facts is not None)])
    out.gauge("scan_timestamp_seconds", "When the scan ran (by default when these metrics were rendered, just after it), "
              "in seconds since the epoch.", [([], timestamp)])
    if facts is None:
        return out.text()

    summary = facts.get("summary") or {}
    scan = facts.get("scan") or {}
    orphans = facts.get("orphans") or []
    out.gauge("scan_complete", "1 if the scan could inspect every process and loop device, 0 if it was partial "
              "(not root, or processes protected by an LSM; see the warnings of frelink_facts).",
              [([], bool(scan.get("complete", False)))])
    out.gauge("scan_processes", "Processes inspected by the scan.", [([], _number(scan.get("processes"), "processes"))])
    out.gauge("scan_fds", "File descriptors inspected by the scan.", [([], _number(scan.get("fds"), "fds"))])
    out.gauge("scan_warnings", "Warnings of the scan (what it could not see).", [([], len(scan.get("warnings") or []))])

    deliberate = summary.get("deliberate") or {}
    deliberate_count = _number(deliberate.get("count", 0), "summary.deliberate.count")
    deliberate_bytes = _number(deliberate.get("bytes_pinned", 0), "summary.deliberate.bytes_pinned")
    by_class = summary.get("by_class")
    if isinstance(by_class, Mapping):  # the headline is what is at risk: lost and kernel
        classes = dict((name, (_number((by_class.get(name) or {}).get("count", 0), "summary.by_class.%s" % name),
                               _number((by_class.get(name) or {}).get("bytes_pinned", 0),
                                       "summary.by_class.%s" % name))) for name in CLASSES)
        headline_count = sum(classes[name][0] for name in AT_RISK)
        headline_bytes = sum(classes[name][1] for name in AT_RISK)
    else:  # facts of an older module: every class but deliberate
        classes = None
        headline_count = _number(summary.get("count", len(orphans)), "summary.count") - deliberate_count
        headline_bytes = _number(summary.get("bytes_pinned", 0), "summary.bytes_pinned") - deliberate_bytes
    out.gauge("orphans", "Deleted files at risk: still held, no name left, and their data nowhere else (classes "
              "lost and kernel); replaced code and package files (a restart frees them) and those their program "
              "unlinked on purpose are counted apart (orphans_by_class).",
              [([], headline_count)])
    out.gauge("orphans_by_class", "Deleted files that are still held, by class: lost (data dies with its holders), "
              "kernel (held only by a loop device, swap or mount), replaced (code or package content whose path "
              "holds a newer file: restart its holders), deliberate (unlinked on purpose).",
              [([("class", name)], classes[name][0]) for name in CLASSES] if classes else [])
    out.gauge("pinned_bytes_by_class", "Allocated bytes of those deleted files, by class.",
              [([("class", name)], classes[name][1]) for name in CLASSES] if classes else [])
    out.gauge("orphans_deliberate", "Deleted files their program unlinked on purpose and keeps using (POSIX "
              "semaphores, shared memory, InnoDB temporary files): nothing lost; not in orphans.",
              [([("idiom", idiom)], _number(n, "summary.deliberate.by_idiom"))
               for idiom, n in sorted((deliberate.get("by_idiom") or {}).items())])
    out.gauge("pinned_bytes_deliberate", "Allocated bytes of those deliberate ones; not in pinned_bytes.",
              [([], deliberate_bytes)])
    out.gauge("orphans_listed", "Of them, listed one by one in the facts (the module's limit, largest first).",
              [([], _number(summary.get("listed", len(orphans)), "summary.listed"))])
    out.gauge("orphans_mapped_only", "Deleted files held only by memory mappings (which lsof +L1 does not show).",
              [([], _number(summary.get("mapped_only"), "summary.mapped_only"))])
    out.gauge("pinned_bytes", "Allocated bytes of the deleted files at risk (orphans): space not freed whose data "
              "is nowhere else; pinned_bytes_by_class has every class.",
              [([], headline_bytes)])
    out.gauge("apparent_bytes", "Apparent size (sum of st_size) of deleted files that are still held.",
              [([], _number(summary.get("bytes_apparent"), "summary.bytes_apparent"))])

    by_kind = summary.get("by_kind") or {}
    kinds = list(KINDS) + sorted(k for k in by_kind if k not in KINDS)
    split = _ContainerSplit(orphans)
    out.gauge("orphans_by_kind", "Deleted files held by at least one holder of this kind (fd, mmap, cwd, root, "
              "exe, loop, swap, mount); one held by several kinds counts under each. Without a container label: "
              "held by the host (a process outside containers, or the kernel); with container: by a process (or "
              "a mount) in that container; one held from several places counts under each.",
              [([("kind", kind)], _minus(_number(by_kind.get(kind, 0), "summary.by_kind.%s" % kind),
                                         split.contained_only_by_kind.get(kind, (0, 0))[0])) for kind in kinds]
              + [([("kind", kind), ("container", name)], split.by_kind.get((name, kind), (0, 0))[0])
                 for name in split.containers for kind in kinds + split.kinds_beyond(kinds)])
    kind_bytes = dict((kind, 0) for kind in kinds)
    if "bytes_by_kind" in summary:  # the module's own totals over every orphan
        for kind, value in summary["bytes_by_kind"].items():
            kind_bytes[kind] = _number(value, "summary.bytes_by_kind.%s" % kind)
        for kind, (_count, allocated) in split.contained_only_by_kind.items():
            kind_bytes[kind] = _minus(kind_bytes.get(kind, 0), allocated)
        exact = "every deleted file"
    else:  # facts of an older module: what the listed entries show
        for (name, kind), (_count, allocated) in split.by_kind.items():
            if name is None:
                kind_bytes[kind] = kind_bytes.get(kind, 0) + allocated
        exact = "the listed deleted files (a lower bound when orphans_listed is below orphans)"
    all_kinds = kinds + sorted(set(kind_bytes) - set(kinds))
    out.gauge("pinned_bytes_by_kind", "Allocated bytes held by this kind, over %s; container as for "
              "orphans_by_kind." % exact,
              [([("kind", kind)], kind_bytes[kind]) for kind in all_kinds]
              + [([("kind", kind), ("container", name)], split.by_kind.get((name, kind), (0, 0))[1])
                 for name in split.containers for kind in kinds + split.kinds_beyond(kinds)])

    filesystems = summary.get("by_filesystem") or []
    known = set(fs.get("device") for fs in filesystems)
    # a device that listed orphans name but the summary does not (inconsistent input): the orphans' labels
    unknown = sorted(set(device for _place, device in split.by_device if device not in known), key=_text)

    def fs_labels(fs):
        return [("devno", fs.get("device")), ("fstype", fs.get("fstype")), ("mountpoint", fs.get("mount_point"))]

    def fs_series(field, index):
        host = []
        for fs in filesystems:
            host.append((fs_labels(fs), _minus(_number(fs.get(field), "by_filesystem[].%s" % field),
                                               split.contained_only_by_device.get(fs.get("device"), (0, 0))[index])))
        labelled = [fs_labels(fs) for fs in filesystems] + [fs_labels(split.fs_labels[device]) for device in unknown]
        return host + [(labels + [("container", name)], split.by_device[(name, labels[0][1])][index])
                       for name in split.containers for labels in labelled
                       if (name, labels[0][1]) in split.by_device]

    out.gauge("filesystem_orphans", "Deleted files still held on this filesystem; container as for orphans_by_kind.",
              fs_series("count", 0))
    out.gauge("filesystem_pinned_bytes", "Allocated bytes of deleted files still held on this filesystem; "
              "container as for orphans_by_kind.", fs_series("bytes_pinned", 1))
    # what frelink_reclaim frees by default, by its own rule (reclaim/rules.py), over the listed orphans
    reclaim_by_device = {}
    for orphan in orphans:
        if isinstance(orphan, Mapping) and reclaimable(orphan):
            count, total = reclaim_by_device.get(orphan.get("device"), (0, 0))
            reclaim_by_device[orphan.get("device")] = (
                count + 1, total + (_number(orphan.get("allocated"), "orphans[].allocated") or 0))
    out.gauge("reclaimable_orphans", "Deleted files that frelink_reclaim would truncate by default, freeing their "
              "space without a restart (class lost, not mapped, every writer write-only or appending: deleted logs "
              "still written); over the listed ones.", [([], sum(c for c, _b in reclaim_by_device.values()))])
    out.gauge("reclaimable_bytes", "Allocated bytes of those: what frelink_reclaim would give back by default.",
              [([], sum(b for _c, b in reclaim_by_device.values()))])
    out.gauge("filesystem_reclaimable_bytes", "Allocated bytes on this filesystem that frelink_reclaim would give "
              "back by default (as reclaimable_bytes).",
              [(fs_labels(fs), reclaim_by_device.get(fs.get("device"), (0, 0))[1]) for fs in filesystems]
              + [(fs_labels(split.fs_labels[device]), reclaim_by_device[device][1]) for device in unknown
                 if device in reclaim_by_device])
    out.gauge("filesystem_free_bytes", "Bytes available to unprivileged users on this filesystem (room for a copy).",
              [(fs_labels(fs), _number(fs.get("free_bytes"), "by_filesystem[].free_bytes")) for fs in filesystems])
    return out.text()


class FilterModule(object):
    """frelink filters."""

    def filters(self):
        return {"prometheus_textfile": prometheus_textfile}
