# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether a held deleted file may be truncated: the one rule that frelink_reclaim enforces and that the
audit and the metrics count ("what a reclaim would give back").

It reads a facts entry (ansible_facts.frelink.orphans[]) only, so the controller-side filters apply it
to the same data.  A file is reclaimable by default when all of these hold:

- it is a regular file of class ``lost`` (not ``replaced``, ``deliberate`` or ``kernel``);
- no process maps it (truncating a mapped file kills the process with SIGBUS on its next access:
  never allowed, not even with allow_read_write) and none runs it as its executable;
- no loop device, swap area or mount holds it (the kernel's holders);
- every holder is listed (the facts list at most 16 per file; holder_count says how many there are);
- at least one process holds it through a descriptor (the truncation goes through one), and every
  descriptor that can write is write-only or in append mode (a log).  A file held read-write or only
  for reading may be a database or data somebody reads: allowed only with allow_read_write.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.attribution import restart_target

# facts holder modes (procfs.access_mode) of a log writer: write-only, or append mode
LOG_WRITER_MODES = frozenset(("w", "wa", "rwa"))
_KERNEL_KINDS = frozenset(("loop", "swap", "mount"))

# rule names, in the order they are checked; OPT_IN is what allow_read_write allows
RULES = ("not_a_file", "class", "mapped", "executable", "kernel_holder", "holders_not_listed", "no_descriptor",
         "read_write")
OPT_IN = frozenset(("read_write",))


def restart_targets(entry):
    """[(kind, name)] of what to restart so that every holder lets go (attribution.restart_target)."""
    listed = entry.get("restart_targets")
    if listed:
        return sorted((t.get("kind"), t.get("name")) for t in listed)
    return sorted(set(restart_target(h) for h in entry.get("holders") or []))


def restart_text(entry):
    """'systemd unit app.service, container docker 0123' for a message."""
    words = {"unit": "systemd unit", "pod": "pod", "container": "container", "process": "process",
             "loop": "loop device", "mount": "mount", "swap": "swap area"}
    return ", ".join("%s %s" % (words.get(kind, kind), name) for kind, name in restart_targets(entry)) or "its holders"


def _who(holder):
    what = "%s[%s]" % (holder.get("name") or "?", holder.get("pid", "?"))
    if holder.get("unit"):
        what += " (%s)" % holder["unit"]
    return what


def refusals(entry, allow_read_write=False):
    """[(rule, why and what to do)] for a facts entry; empty when it may be truncated.

    With allow_read_write the rules of OPT_IN are not checked."""
    found = []
    holders = entry.get("holders") or []
    restart = restart_text(entry)
    if entry.get("type", "file") != "file":
        found.append(("not_a_file", "it is a %s, not a regular file: only a file can be truncated"
                      % entry.get("type")))
    klass = entry.get("class") or "lost"
    if klass == "deliberate":
        idiom = (entry.get("deliberate") or {}).get("idiom", "?")
        found.append(("class", "its program unlinked it on purpose (idiom %s) and still uses it; restart %s to "
                      "free it if you must" % (idiom, restart)))
    elif klass == "replaced":
        found.append(("class", "it is code or package content that an upgrade replaced (class replaced); restart "
                      "%s to free it" % restart))
    elif klass == "kernel":
        found.append(("class", "only the kernel holds it (class kernel: loop device, swap or mount), no process "
                      "writes it; release it: %s" % restart))
    elif klass != "lost":
        found.append(("class", "its class is %s, not lost; restart %s to free it" % (klass, restart)))
    mappers = [h for h in holders if h.get("kind") == "mmap"]
    if mappers:
        found.append(("mapped", "it is mapped into memory by %s: truncating a mapped file kills its process with "
                      "SIGBUS, so frelink never does it (not even with allow_read_write); restart %s to free it"
                      % (", ".join(_who(h) for h in mappers), restart)))
    runners = [h for h in holders if h.get("kind") == "exe"]
    if runners:
        found.append(("executable", "it is the running executable of %s; restart %s to free it"
                      % (", ".join(_who(h) for h in runners), restart)))
    kernel = [h for h in holders if h.get("kind") in _KERNEL_KINDS]
    if kernel and klass != "kernel":
        found.append(("kernel_holder", "a %s holds it too; release it (%s) before it can be reclaimed"
                      % (", ".join(sorted(set(h["kind"] for h in kernel))), restart)))
    count = entry.get("holder_count")
    if count is not None and count > len(holders):
        found.append(("holders_not_listed", "it has %d holders and the facts list %d, so the others' modes are "
                      "unknown; restart %s to free it" % (count, len(holders), restart)))
    fds = [h for h in holders if h.get("kind") == "fd"]
    if not fds:
        if not (mappers or runners or kernel or klass == "kernel"):
            found.append(("no_descriptor", "no process has it open through a descriptor to truncate it through; "
                          "restart %s to free it" % restart))
    elif not allow_read_write:
        unknown = [h for h in fds if not h.get("mode")]
        others = [h for h in fds if h.get("mode") and h["mode"] not in LOG_WRITER_MODES and "w" in h["mode"]]
        writers = [h for h in fds if h.get("mode") and "w" in h["mode"]]
        if unknown:
            found.append(("read_write", "the open mode of %s is unknown (its fdinfo could not be read); if every "
                          "writer only appends, set allow_read_write: true for this file, or restart %s"
                          % (", ".join("%s fd %s" % (_who(h), h.get("fd")) for h in unknown), restart)))
        if others:
            found.append(("read_write", "%s holds it read-write (not a log: it may be a database whose data this "
                          "would destroy); if you know its content can go, set allow_read_write: true for this "
                          "file, otherwise restart %s to free it"
                          % (", ".join("%s fd %s mode %s" % (_who(h), h.get("fd"), h["mode"]) for h in others),
                             restart)))
        if not writers and not unknown:
            found.append(("read_write", "no process writes it, it is only read (by %s): not a log being written; "
                          "if its content can go, set allow_read_write: true for this file, otherwise restart %s"
                          % (", ".join(_who(h) for h in fds), restart)))
    return found


def reclaimable(entry, allow_read_write=False):
    """True when frelink_reclaim would truncate this facts entry (refusals() is empty)."""
    return not refusals(entry, allow_read_write)


def reclaimable_bytes(entry):
    """The allocated bytes a reclaim with the default rules gives back for this facts entry (0 when refused)."""
    if not reclaimable(entry):
        return 0
    return int(entry.get("allocated") or 0)
