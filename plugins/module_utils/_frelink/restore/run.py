# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Give a deleted-but-held file its name back: one restore (restore_target)
and the whole task (run).

Everything here runs on the managed node with the standard library only.
The jobs live in their own files: selection (targets.py), the destination
(destination.py), the plan (plan.py), copy and reflink (duplicate.py), the
relink ioctl (kmod_abi.py).  The discovery of orphans is not repeated here:
it comes from scan/facts.py, the same code frelink_facts runs.

Safety rules, enforced for every method:
  * the destination is never overwritten (new names are made with linkat /
    O_EXCL / renameat2(RENAME_NOREPLACE) or link()+unlink(), never rename());
  * no symlink is ever followed in the destination: its directory is opened
    one component at a time from / with O_NOFOLLOW|O_DIRECTORY and the name is
    made relative to that directory fd;
  * a copy or clone is only committed when the source did not change while it
    was read (same size, mtime and ctime before and after, same sha256 for
    the source read again after the copy as for the bytes written).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.destination import DestDir
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.duplicate import compare_copy, duplicate, open_source
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string, parse_mountinfo, read_text
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.overlay import layer_containing, rescued_paths
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.plan import (
    FALLBACKS,
    METHODS,
    Options,
    plan_methods,
    refusal_changed_nothing,
)
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.targets import (
    Target,
    candidate_list,
    describe,
    orphans_by_globs,
    orphans_by_path,
    parse_device,
    resolve_inode,
    resolve_src,
)

__all__ = ["FALLBACKS", "METHODS", "RestoreError", "run"]


def _base_result(target, dest):
    res = {
        "dest": dest,
        "path": target.path,
        "dev": target.dev,
        "device": device_string(target.dev),
        "ino": target.ino,
        "size": target.size,
        "changed": False,
    }
    return res


def _diff(dest, before, after):
    return {"before_header": dest, "after_header": dest, "before": before, "after": after}


def _state_text(st=None, extra=None):
    if st is None:
        return "state: absent\n"
    lines = ["state: %s" % ("file" if stat.S_ISREG(st.st_mode) else "other"),
             "device: %s" % device_string(st.st_dev), "inode: %d" % st.st_ino, "size: %d" % st.st_size]
    for key, value in sorted((extra or {}).items()):
        lines.append("%s: %s" % (key, value))
    return "\n".join(lines) + "\n"


def restore_target(target, dest, opts, check_mode=False):
    """Restores one target to dest; returns the per-item result dict or
    raises RestoreError. Nothing is changed when it raises, except parent
    directories created on request before the refusal."""
    if dest is None:
        dest = target.default_dest()
        if not dest and target.nlink < 0:
            raise RestoreError("no deleted file that is still held has device %s inode %d (restored already, or "
                               "its last holder exited; give dest to check where it was restored)"
                               % (device_string(target.dev), target.ino))
        if not dest:
            raise RestoreError("inode %s on device %s has no known original path and no dest was given; set dest"
                               % (target.ino, device_string(target.dev)))
    res = _base_result(target, dest)
    layer = layer_containing(target.overlay, dest)
    if layer:
        raise RestoreError("dest %s is inside the layer directory %s of the overlay that holds %s: changing the "
                           "layers of a mounted overlay is undefined, so frelink never names a file there; the "
                           "default dest is %s" % (dest, layer, target.path, target.rescue_dest))
    rescue = target.overlay is not None and dest == target.rescue_dest
    dest_dir = DestDir(dest, opts.create_parents or rescue, check_mode)
    if target.overlay:
        res["overlay"] = target.overlay
    src_fd = None
    try:
        existing = dest_dir.lstat_name()
        if existing is not None:
            if stat.S_ISLNK(existing.st_mode):
                raise RestoreError("dest %s is a symbolic link: frelink never follows or replaces it; remove it "
                                   "or choose another dest" % dest)
            if (existing.st_dev, existing.st_ino) in ((target.dev, target.ino), target.name_identity()):
                res.update(status="already_restored", method="link", identity_preserved=True,
                           verification={"dest_dev": existing.st_dev, "dest_ino": existing.st_ino,
                                         "same_inode": True})
                res["msg"] = "%s already names device %s inode %d" % (dest, res["device"], target.ino)
                return res
            same = None
            if target.is_orphan and (opts.method in FALLBACKS or (opts.method == "auto" and opts.fallback)):
                src_fd = open_source(target)
                if src_fd is not None:
                    same = compare_copy(src_fd, dest_dir, existing)
            if same is not None:
                how, digest, size = same
                res.update(method="copy", identity_preserved=False,
                           verification={"sha256": digest, "source_sha256": digest, "size": size})
                if how == "equal":
                    res["status"] = "already_copied"
                    res["msg"] = ("%s already holds an identical copy (sha256 %s) of the deleted file, which is "
                                  "still held under its old identity" % (dest, digest))
                else:
                    res["status"] = "copy_outdated"
                    res["msg"] = ("%s holds a copy of the first %s bytes of the deleted file, which is still held "
                                  "and has grown to %s bytes since; nothing was changed. To refresh the copy, move "
                                  "%s away and rerun; to keep every later write, relink it instead (method: link, "
                                  "kernel module)" % (dest, size, os.fstat(src_fd).st_size, dest))
                return res
            raise RestoreError(
                "dest %s exists (device %s inode %d, %d bytes) and is not the deleted file %s; nothing was "
                "touched: choose another dest, e.g. %s.restored" % (
                    dest, device_string(existing.st_dev), existing.st_ino, existing.st_size,
                    describe(target.orphan) if target.orphan else "device %s inode %d" % (res["device"], target.ino),
                    dest))
        if not target.is_orphan:
            if target.nlink < 0:
                raise RestoreError("no deleted file that is still held has device %s inode %d (restored "
                                   "elsewhere already, or its last holder exited); dest %s does not exist"
                                   % (res["device"], target.ino, dest))
            raise RestoreError("%s (device %s inode %d) is not deleted (it has %d links) and dest %s does not "
                               "name it: nothing to restore"
                               % (target.path, res["device"], target.ino, target.nlink, dest))
        if (target.orphan or {}).get("type", "file") != "file":
            raise RestoreError("%s is a %s; only regular files can be given a name back"
                               % (target.path, target.orphan.get("type")))
        plan, reasons = plan_methods(target, dest_dir, opts, check_mode)
        method = plan[0]
        res["method"] = method
        res["identity_preserved"] = method == "link"
        if method == "link":
            res["link_mechanism"] = "linkat" if target.silly_renamed else "frelink_kmod"
        if reasons:
            res["fallback_reasons"] = reasons
        res["changed"] = True
        res["diff"] = _diff(dest, _state_text(), "state: file\ndevice: %s\ninode: %s\nsize: %s\nmethod: %s\n" % (
            res["device"], target.ino if method == "link" else "(new)", target.size, method))
        if dest_dir.missing:
            res["created_dirs"] = dest_dir.missing
        if check_mode:
            res["status"] = "would_restore"
            res["msg"] = "would %s %s to %s" % (method, target.path, dest)
            return res
        res["created_dirs"] = dest_dir.created
        for i, method in enumerate(plan):
            try:
                if method == "link":
                    res["verification"] = _relink(target, dest_dir)
                else:
                    if src_fd is None:
                        src_fd = open_source(target)
                    res["verification"] = duplicate(method, src_fd, dest_dir, target, opts.copy_retries)
                break
            except RestoreError as exc:
                if i + 1 == len(plan) or not refusal_changed_nothing(method, exc.details.get("errno")):
                    raise
                res.setdefault("fallback_reasons", []).append("%s: %s" % (method, exc.msg))
        res["method"] = method
        res["identity_preserved"] = method == "link"
        if method != "link":
            res.pop("link_mechanism", None)
        final = dest_dir.lstat_name()
        res["diff"]["after"] = _state_text(final, {"method": method})
        res["status"] = "restored"
        res["msg"] = "%s %s to %s" % ("relinked" if method == "link" else method + " of", target.path, dest)
        if method != "link":
            res["msg"] += (" (a new inode %d: processes still holding the deleted file keep writing to it, "
                           "not to the copy)" % final.st_ino)
            res["dest_ino"] = final.st_ino
        return res
    finally:
        if src_fd is not None:
            os.close(src_fd)
        dest_dir.close()


def _relink(target, dest_dir):
    src_fd = open_source(target)
    if target.silly_renamed:
        return _link_silly_renamed(target, src_fd, dest_dir)
    try:
        if src_fd is not None:
            if os.fstat(src_fd).st_nlink != 0:
                raise RestoreError("%s got a name while frelink worked on it; rerun to see where" % target.path)
            kmod_abi.relink_by_fd(src_fd, dest_dir.fd, dest_dir.name)
        else:
            # the generation the scan got from the module: refused (ESTALE) if another
            # deleted file has taken the inode number meanwhile
            kmod_abi.relink_by_inode(target.dev, target.ino, dest_dir.fd, dest_dir.name,
                                     generation=(target.orphan or {}).get("generation"))
    except kmod_abi.RelinkError as exc:
        raise RestoreError("the kernel module refused to relink %s to %s: %s (%s)" % (
            target.path, dest_dir.dest, exc.hint, kmod_abi.errno_name(exc.errno)), errno=exc.errno)
    finally:
        if src_fd is not None:
            os.close(src_fd)
    return _verify_link(target, dest_dir)


def _link_silly_renamed(target, src_fd, dest_dir):
    """An NFS client renamed the file to .nfsXXXX instead of deleting it: it still has a
    name, so link(2) of the very inode open as src_fd (via /proc/self/fd) gives it another."""
    try:
        if src_fd is None:
            raise RestoreError("%s is no longer open by any process; nothing to link" % target.path)
        try:
            os.link("/proc/self/fd/%d" % src_fd, dest_dir.name, dst_dir_fd=dest_dir.fd, follow_symlinks=True)
        except OSError as exc:
            raise RestoreError("link of %s (NFS silly-renamed, still named %s) to %s failed: %s; choose a dest on "
                               "the same NFS mount, or use method: copy" % (
                                   target.path, target.current_name, dest_dir.dest, exc.strerror), errno=exc.errno)
    finally:
        if src_fd is not None:
            os.close(src_fd)
    return _verify_link(target, dest_dir)


def _verify_link(target, dest_dir):
    os.fsync(dest_dir.fd)
    st = dest_dir.lstat_name()
    if st is None or (st.st_dev, st.st_ino) != target.name_identity():
        raise RestoreError("after the relink %s does not name device %s inode %d; report this as a bug"
                           % (dest_dir.dest, device_string(target.name_identity()[0]), target.ino))
    return {"dest_dev": st.st_dev, "dest_ino": st.st_ino, "same_inode": True, "nlink": st.st_nlink,
            "size": st.st_size}


def dest_in_dir(dest_dir, original, layout):
    if layout == "flat":
        return dest_dir.rstrip("/") + "/" + original.rstrip("/").rsplit("/", 1)[-1]
    return dest_dir.rstrip("/") + "/" + original.lstrip("/")


def run(params, check_mode=False):
    """Everything the module does; returns the module result (without
    failed) and a list of failure messages."""
    opts = Options(params.get("method") or "auto", params.get("fallback") or (),
                   bool(params.get("create_parents")), _int_or(params.get("copy_retries"), 2))
    dest = params.get("dest")
    dest_dir = params.get("dest_dir")
    layout = params.get("layout") or "tree"
    items = []  # (selector text, Target or RestoreError)
    scan_info = {}
    for key in ("path", "src", "dest", "dest_dir"):
        if params.get(key) is not None and not params[key].strip():
            raise RestoreError("%s is empty; give an absolute path or leave it out" % key)
    if dest_dir is not None and not dest_dir.startswith("/"):
        raise RestoreError("dest_dir %r must be an absolute path (a relative one would depend on the directory the "
                           "module happens to run in)" % dest_dir)
    if params.get("path") is not None and not params["path"].startswith("/"):
        raise RestoreError("path %r must be absolute: the original path as ansible_facts.frelink.orphans[].path "
                           "shows it" % params["path"])
    if params.get("paths") is not None and not params["paths"]:
        raise RestoreError("paths is empty; give at least one pattern (e.g. ['/var/log/*']), or use path, src or "
                           "device+inode")
    if params.get("inode") is not None and int(params["inode"]) <= 0:
        raise RestoreError("inode %s is not an inode number (1 or more); take it from "
                           "ansible_facts.frelink.orphans[].ino" % params["inode"])
    if params.get("paths"):
        orphans, scan_info = orphans_by_globs(params["paths"])
        by_path = {}
        for orphan in orphans:
            by_path.setdefault(orphan.get("path"), []).append(orphan)
        for path in sorted(by_path, key=lambda p: p or ""):
            group = by_path[path]
            if len(group) > 1:
                items.append((path, _ambiguity(path, group)))
                continue
            items.append((path, _target_of(group[0])))
    elif params.get("path") is not None:
        path = params["path"]
        group, scan_info = orphans_by_path(path)
        if len(group) > 1:
            items.append((path, _ambiguity(path, group)))
        elif group:
            items.append((path, _target_of(group[0])))
        else:
            probe = dest or (dest_in_dir(dest_dir, path, layout) if dest_dir else path)
            items.append((path, _absent_by_path(path, probe, scan_info, rescue=not (dest or dest_dir))))
    elif params.get("src") is not None:
        items.append((params["src"], _guard(resolve_src, params["src"])))
    else:
        dev = parse_device(params.get("device"))
        selector = "%s/%s" % (device_string(dev), params.get("inode"))
        items.append((selector, _guard(resolve_inode, dev, int(params["inode"]), params.get("generation"))))
    results, failures = [], []
    for selector, target in items:
        item = {"selector": selector}
        try:
            if isinstance(target, RestoreError):
                raise target
            if isinstance(target, dict):  # nothing to do, already explained
                item.update(target)
                results.append(item)
                continue
            this_dest = dest
            if dest_dir:
                this_dest = dest_in_dir(dest_dir, target.path or "", layout)
            item.update(_restore_one(target, this_dest, opts, check_mode))
        except RestoreError as exc:
            item.update(failed=True, msg=exc.msg, changed=False)
            item.update(exc.details)
            failures.append("%s: %s" % (selector, exc.msg) if params.get("paths") else exc.msg)
        results.append(item)
    changed = any(r.get("changed") for r in results)
    out = {"changed": changed, "results": results, "scan": scan_info}
    diffs = [r.pop("diff") for r in results if r.get("diff")]
    if diffs:
        out["diff"] = diffs if len(diffs) > 1 else diffs[0]
    if not params.get("paths") and len(results) == 1:
        for key, value in results[0].items():
            if key not in ("failed", "changed", "selector"):
                out[key] = value
    elif params.get("paths"):
        done = [r for r in results if r.get("status") in ("restored", "would_restore")]
        out["msg"] = "%d of %d matching deleted files %s%s.%s" % (
            len(done), len(results), "would be restored" if check_mode else "restored",
            ", %d failed" % len(failures) if failures else "", partial_scan_hint(scan_info))
    return out, failures


def _restore_one(target, dest, opts, check_mode):
    """restore_target(), with any system call failure it did not foresee turned into a message."""
    try:
        return restore_target(target, dest, opts, check_mode)
    except OSError as exc:
        raise RestoreError("restoring %s to %s failed: %s%s; nothing was overwritten (a temporary file, if any, was "
                           "removed): fix that and rerun" % (
                               target.path, dest or "its original path", exc.strerror,
                               " (%s)" % exc.filename if exc.filename else ""), errno=exc.errno)


def _int_or(value, default):
    return default if value is None else int(value)


def _guard(func, *args):
    try:
        return func(*args)
    except RestoreError as exc:
        return exc


def _ambiguity(path, group):
    return RestoreError(
        "%d deleted files had the original path %s; frelink does not guess: select one with device+inode (or "
        "src) from the candidates: %s" % (len(group), path, "; ".join(describe(o) for o in group)),
        candidates=candidate_list(group))


def _target_of(orphan):
    """The Target of a scanned orphan, or a RestoreError when it has no inode to reach."""
    if orphan.get("ino") is None:
        return RestoreError("%s is held only as a swap area (/proc/swaps gives no inode number): frelink cannot "
                            "reach it, and its content is swap, nothing to restore; 'swapoff %s' releases the space"
                            % (orphan.get("path"), orphan.get("path")))
    return Target(orphan["dev"], orphan["ino"], orphan=orphan)


def partial_scan_hint(scan_info):
    """' The scan was partial ...' when the scan could not see everything, else ''."""
    if not scan_info or scan_info.get("complete", True):
        return ""
    hint = " The scan was partial (%s)" % "; ".join(scan_info.get("warnings") or ["not everything could be read"])
    if scan_info.get("euid", 0) != 0:
        hint += "; run the task as root with become: true"
    return hint + "."


def _absent_by_path(path, probe, scan_info=None, rescue=False):
    """No orphan with this original path: fine when dest exists (restored
    before; a name that is not UTF-8 may be given as the facts show it), or,
    without a dest, when an overlay rescue directory holds the path (a file
    deleted in a container's merged view is restored there by default); an
    error otherwise."""
    for name in names.spellings(probe):
        try:
            st = DestDir(name, False, True)
            existing = st.lstat_name()
            st.close()
        except RestoreError:
            existing = None
        if existing is not None and not stat.S_ISLNK(existing.st_mode):
            return {"changed": False, "status": "nothing_to_restore", "dest": name, "path": path,
                    "msg": "no deleted file that is still held has the original path %s, and %s exists "
                           "(restored before?)" % (path, name)}
    if rescue:
        try:
            mounts = parse_mountinfo(read_text("/proc/self/mountinfo"))
        except OSError:
            mounts = []
        for name in names.spellings(path):
            rescued = rescued_paths(name, mounts)
            if rescued:
                return {"changed": False, "status": "nothing_to_restore", "dest": rescued[0], "path": path,
                        "msg": "no deleted file that is still held has the original path %s; it was restored into "
                               "the overlay rescue directory before: %s" % (path, ", ".join(rescued))}
    partial = partial_scan_hint(scan_info)
    if partial:
        return RestoreError("no deleted file that is still held with the original path %s was found, but the scan "
                            "could not see every process, so it may exist.%s" % (path, partial))
    return RestoreError("no deleted file that is still held has the original path %s (its last holder may have "
                        "exited; list what is recoverable with frelink_facts)" % path)
