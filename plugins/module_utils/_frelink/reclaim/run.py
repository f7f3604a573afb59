# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""frelink_reclaim's whole task: select (selection.py), judge every file by the rule (rules.py), open each
through a holder's descriptor and verify it (handle.py), check archive_dir (archive.py), and only when
nothing is refused: archive, truncate, and measure each filesystem (space.py).

Order of the safety guarantees:
  * every check, for every selected file, runs before the first change; a refusal of any file (unless
    skip_refused) fails the task with nothing changed;
  * just before the first change the rule is applied again on a fresh scan (recheck.py): a file mapped or
    opened read-write meanwhile is refused then, still with nothing changed;
  * after the first change the task never fails: a file that cannot be done then is reported
    (status not_reclaimed, with why) and the task is changed, with warnings.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim import recheck, rules
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.archive import ArchiveDir
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.handle import Gone, open_verified
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.selection import select
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.space import Filesystems
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.run import partial_scan_hint

__all__ = ["RestoreError", "run"]

ARCHIVE_ATTEMPTS = 3


class _Planned(object):
    """A file that passed every check, open through a holder's descriptor."""

    def __init__(self, item, entry, fd, st, through):
        self.item = item
        self.entry = entry
        self.fd = fd
        self.st = st
        self.through = through
        self.path = names.raw(entry, "path")


def _base(selector, entry):
    item = {"selector": selector, "changed": False}
    if isinstance(entry, dict) and "ino" in entry:
        names.put(item, "path", names.raw(entry, "path"))
        item.update(dev=entry.get("dev"), device=entry.get("device"), ino=entry.get("ino"),
                    size=entry.get("size"), allocated=entry.get("allocated"),
                    mount_point=entry.get("mount_point"),
                    restart=[{"kind": kind, "name": name} for kind, name in rules.restart_targets(entry)])
    return item


def _state(size, allocated, archive=None):
    text = "size: %s\nallocated: %s\n" % (size, allocated)
    if archive:
        text += "archive: %s\n" % archive
    return text


def _plan(items, allow_read_write, flags):
    """(results, planned, refused): refused are the results of files that may not be truncated."""
    results, planned, refused = [], [], []
    for selector, entry in items:
        item = _base(selector, entry)
        results.append(item)
        if isinstance(entry, RestoreError):
            item.update(status="refused", msg=entry.msg, failed=True)
            item.update(entry.details)
            refused.append(item)
            continue
        if "ino" not in entry:  # already explained: nothing to do
            item.update(entry)
            continue
        found = rules.refusals(entry, allow_read_write)
        if found:
            item.update(status="refused", failed=True, refusals=[{"rule": rule, "why": why} for rule, why in found],
                        msg="%s is not reclaimed: %s" % (names.raw(entry, "path"), "; ".join(w for _r, w in found)))
            refused.append(item)
            continue
        if not entry.get("size") and not entry.get("allocated"):
            item.update(status="already_empty", msg="%s is empty already (0 bytes)" % names.raw(entry, "path"))
            continue
        try:
            fd, st, through = open_verified(entry, flags)
        except Gone as exc:
            item.update(status="nothing_to_reclaim", msg="%s; nothing to reclaim" % exc)
            continue
        except RestoreError as exc:
            item.update(status="refused", failed=True, msg=exc.msg, **exc.details)
            refused.append(item)
            continue
        if st.st_size == 0 and st.st_blocks == 0:
            os.close(fd)
            item.update(status="already_empty", msg="%s is empty already (0 bytes)" % names.raw(entry, "path"))
            continue
        item.update(size=st.st_size, allocated=st.st_blocks * 512, through=through)
        planned.append(_Planned(item, entry, fd, st, through))
    return results, planned, refused


def _archive_then_truncate(plan, archive_dir):
    """Archive (when asked) and truncate one file; returns the archive's record or None."""
    record = None
    if archive_dir is not None:
        for _attempt in range(ARCHIVE_ATTEMPTS):
            record = archive_dir.write(plan.fd, plan.path, plan.st.st_dev, plan.st.st_ino)
            if os.fstat(plan.fd).st_size == record["size"]:
                break
            os.unlink(names.raw(record, "archive"))
            record = None
        if record is None:
            raise RestoreError("%s kept growing while it was archived (%d attempts): it was not truncated, so no "
                               "write is lost; rerun when it is quieter" % (plan.path, ARCHIVE_ATTEMPTS))
    os.ftruncate(plan.fd, 0)
    return record


def run(params, check_mode=False):
    """Everything the module does; returns (result without failed, [failure messages])."""
    allow_read_write = bool(params.get("allow_read_write"))
    archive_path = params.get("archive_dir")
    items, scan_info = select(params)
    # check mode opens read-only (it writes nothing); what an open for writing would refuse (chattr +a/+i)
    # handle.py checks in both modes
    flags = os.O_RDONLY if check_mode else (os.O_RDWR if archive_path else os.O_WRONLY)
    results, planned, refused = _plan(items, allow_read_write, flags)
    try:
        return _run_planned(results, list(planned), refused, scan_info, archive_path, check_mode, params)
    finally:
        for plan in planned:
            os.close(plan.fd)


def _run_planned(results, planned, refused, scan_info, archive_path, check_mode, params):
    """PLANNED is this function's own list: files refused late are taken out of it (the caller closes them all)."""
    skip_refused = bool(params.get("skip_refused"))
    archive_dir = None
    if archive_path and planned:
        try:
            archive_dir = ArchiveDir(archive_path)
            archive_dir.check([(p.path, p.st.st_dev, p.st.st_size) for p in planned])
        except RestoreError as exc:
            for plan in planned:
                plan.item.update(status="refused", failed=True, msg=exc.msg)
            return _result(results, [], scan_info, check_mode, params), [exc.msg]
    if planned:
        for plan, found in recheck.refused_now(planned, bool(params.get("allow_read_write"))):
            plan.item.update(status="refused", failed=True, refusals=[{"rule": rule, "why": why} for rule, why in found],
                             msg="%s is not reclaimed: it changed since the scan: %s" % (
                                 plan.path, "; ".join(w for _r, w in found)))
            refused.append(plan.item)
            planned.remove(plan)
    failures = [r["msg"] for r in refused]
    if refused and not skip_refused:
        for plan in planned:
            plan.item.update(status="not_reclaimed", msg="%s was not reclaimed because another selected file was "
                                                         "refused (nothing is changed then)" % plan.path)
        return _result(results, [], scan_info, check_mode, params), failures
    for item in refused:  # skip_refused: reported, not failed
        item.pop("failed", None)
        item["status"] = "skipped"
    filesystems = Filesystems()
    for plan in planned:
        filesystems.before(plan)
    warnings = []
    for plan in planned:
        allocated = plan.st.st_blocks * 512
        item = plan.item
        before = _state(plan.st.st_size, allocated)
        if check_mode:
            item.update(status="would_reclaim", changed=True, bytes_to_free=allocated,
                        msg="would truncate %s (%d bytes, %d allocated) through %s%s" % (
                            plan.path, plan.st.st_size, allocated, plan.through,
                            " after a gzip copy into %s" % archive_path if archive_dir else ""))
            item["diff"] = {"before_header": plan.path, "after_header": plan.path, "before": before,
                            "after": _state(0, 0, archive_path and ("a gzip copy in %s" % archive_path))}
            filesystems.predict(plan, allocated)
            continue
        try:
            record = _archive_then_truncate(plan, archive_dir)
            after = os.fstat(plan.fd)
        except Exception as exc:  # pylint: disable=broad-except  # after a change the task must not fail
            if isinstance(exc, RestoreError):
                why = exc.msg
            elif isinstance(exc, OSError):
                why = "%s%s" % (exc.strerror, " (%s)" % exc.filename if exc.filename else "")
            else:
                why = "%s: %s" % (type(exc).__name__, exc)
            if not any(r.get("changed") for r in results):
                item.update(status="refused", failed=True,
                            msg="reclaiming %s failed: %s; nothing was changed" % (plan.path, why))
                return _result(results, [], scan_info, check_mode, params), [item["msg"]]
            item.update(status="not_reclaimed", msg="%s was not reclaimed: %s; it is as it was" % (plan.path, why))
            warnings.append(item["msg"])
            continue
        freed = allocated - after.st_blocks * 512
        item.update(status="reclaimed", changed=True, bytes_freed=freed, size_after=after.st_size,
                    msg="truncated %s through %s: %d bytes (%d allocated) given back%s" % (
                        plan.path, plan.through, plan.st.st_size, freed,
                        ", a gzip copy is %s" % names.raw(record, "archive") if record else ""))
        if record:
            item["archive"] = record
        item["diff"] = {"before_header": plan.path, "after_header": plan.path, "before": before,
                        "after": _state(after.st_size, after.st_blocks * 512, record and names.raw(record, "archive"))}
        filesystems.predict(plan, allocated)
    if not check_mode:
        filesystems.after(planned)
    out = _result(results, filesystems.report(), scan_info, check_mode, params)
    if warnings:
        out["warnings"] = warnings
    return out, []


def _result(results, filesystems, scan_info, check_mode, params):
    changed = any(r.get("changed") for r in results)
    out = {"changed": changed, "results": results, "filesystems": filesystems, "scan": scan_info}
    diffs = [r.pop("diff") for r in results if r.get("diff")]
    if diffs:
        out["diff"] = diffs if len(diffs) > 1 else diffs[0]
    done = [r for r in results if r.get("status") in ("reclaimed", "would_reclaim")]
    total = sum(r.get("bytes_to_free" if check_mode else "bytes_freed") or 0 for r in done)
    out["bytes_to_free" if check_mode else "bytes_freed"] = total
    refused = [r for r in results if r.get("status") in ("refused", "skipped")]
    out["msg"] = "%d of %d selected deleted files %s (%d bytes)%s.%s%s" % (
        len(done), len(results), "would be truncated" if check_mode else "truncated", total,
        ", %d refused" % len(refused) if refused else "",
        " Nothing was changed." if refused and not changed and not check_mode else "",
        partial_scan_hint(scan_info))
    if not params.get("paths") and len(results) == 1:
        for key, value in results[0].items():
            if key not in ("failed", "changed", "selector"):
                out[key] = value
    return out
