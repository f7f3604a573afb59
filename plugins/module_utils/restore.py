# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Give a deleted-but-held file its name back: selection, safety checks and
the three methods (relink through /dev/frelink, FICLONE reflink, verified
copy).

Everything here runs on the managed node with the standard library only.
The discovery of orphans is not repeated here: it comes from scan.py, the
same code frelink_facts runs.

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

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import re
import stat

from ansible_collections.frelink.frelink.plugins.module_utils import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils import loop as loop_mod
from ansible_collections.frelink.frelink.plugins.module_utils import scan as scan_mod

METHODS = ("auto", "link", "reflink", "copy")
FALLBACKS = ("reflink", "copy")
KMOD_ROLE = "frelink.frelink.frelink_kmod"

# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409
RENAME_NOREPLACE = 1
# filesystems whose FICLONE is expected to work; only a prediction for check mode
REFLINK_FSTYPES = ("btrfs", "xfs", "bcachefs", "ocfs2")
CHUNK = 1 << 20
_ZERO_CHUNK = bytes(CHUNK)
_HOLDER_ROOT = re.compile(r"^/proc/(\d+)/root(?:/|$)")
_PROC_OPEN_PATH = re.compile(r"^/proc/(\d+)/(fd/\d+|map_files/[0-9a-f]+-[0-9a-f]+|exe)$")
_LOOP_DEVICE = re.compile(r"^/dev/loop\d+$")


class RestoreError(Exception):
    """A refusal or failure; `msg` says what failed and how to go on."""

    def __init__(self, msg, **details):
        super(RestoreError, self).__init__(msg)
        self.msg = msg
        self.details = details


# ---------------------------------------------------------------- selection

def parse_device(value):
    """st_dev from an int, a decimal string or "major:minor"."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    m = re.match(r"^(\d+):(\d+)$", text)
    if m:
        return os.makedev(int(m.group(1)), int(m.group(2)))
    if text.isdigit():
        return int(text)
    raise RestoreError("device %r is neither an st_dev number nor 'major:minor' (e.g. '8:1')" % (value,))


def device_name(dev):
    return "%d:%d" % (os.major(dev), os.minor(dev))


def _describe(orphan):
    holders = []
    for holder in orphan.get("holders") or []:
        if holder.get("pid") is not None:
            holders.append("%s pid %s (%s)" % (holder.get("kind"), holder.get("pid"), holder.get("name", "?")))
        elif holder.get("device") or holder.get("loop"):
            holders.append("%s %s" % (holder.get("kind"), holder.get("device") or holder.get("loop")))
        else:
            holders.append(str(holder.get("kind")))
    return "%s (device %s inode %s, %s bytes, held by %s)" % (
        orphan.get("path"), orphan.get("device") or device_name(orphan["dev"]), orphan["ino"],
        orphan.get("size"), ", ".join(holders) or "?")


def candidate_list(orphans):
    return [{"path": o.get("path"), "dev": o["dev"], "device": o.get("device") or device_name(o["dev"]),
             "ino": o["ino"], "size": o.get("size"), "open_path": o.get("open_path"),
             "holders": o.get("holders")} for o in orphans]


def orphans_by_path(path):
    """Every orphan whose original path (or path seen from our namespace,
    /proc/PID/root/...) is `path`."""
    return scan_mod.resolve_selector(path), {}


def orphans_by_globs(globs):
    facts = scan_mod.scan(include=list(globs), limit=0)
    return facts.get("orphans") or [], facts.get("scan") or {}


class Target(object):
    """The inode to restore: an orphan from the scan or, when it already has a
    name again, just its identity (for idempotence)."""

    def __init__(self, dev, ino, orphan=None, nlink=0, path=None, size=None):
        self.dev = dev
        self.ino = ino
        self.orphan = orphan
        self.nlink = nlink
        self.path = path if path is not None else (orphan or {}).get("path")
        self.size = size if size is not None else (orphan or {}).get("size")

    @property
    def is_orphan(self):
        return self.orphan is not None and self.nlink == 0

    @property
    def open_path(self):
        return (self.orphan or {}).get("open_path")

    def default_dest(self):
        """The original path, seen from the holder's mount namespace when the
        scan says it differs from ours."""
        holders = (self.orphan or {}).get("holders") or []
        foreign = [h["host_path"] for h in holders if h.get("host_path")]
        ours = [h for h in holders if h.get("pid") is not None and not h.get("host_path")]
        if foreign and not ours:
            return foreign[0]
        return self.path


def _target_from_stat(st, path, orphan=None):
    if st.st_nlink == 0 and orphan is None:
        orphan = scan_mod.find_orphan(st.st_dev, st.st_ino)
    if orphan is not None and st.st_nlink == 0:
        return Target(st.st_dev, st.st_ino, orphan=orphan, nlink=0)
    return Target(st.st_dev, st.st_ino, orphan=None, nlink=st.st_nlink, path=path, size=st.st_size)


def resolve_src(src):
    """/proc/PID/fd/N, /proc/PID/map_files/A-B, /proc/PID/exe or /dev/loopN."""
    if _LOOP_DEVICE.match(src):
        return _resolve_loop(src)
    if not _PROC_OPEN_PATH.match(src):
        raise RestoreError("src %s is neither /proc/PID/fd/N, /proc/PID/map_files/START-END, /proc/PID/exe "
                           "nor /dev/loopN; to select by the file's original name use path=" % src)
    try:
        st = os.stat(src)
        link = os.readlink(src)
    except OSError as exc:
        raise RestoreError("cannot open %s: %s (has the process exited or closed it? list the current holders "
                           "with frelink_facts)" % (src, exc.strerror))
    if link.endswith(" (deleted)"):
        link = link[:-len(" (deleted)")]
    if not stat.S_ISREG(st.st_mode):
        raise RestoreError("%s is not a regular file (%s); only regular files can be restored" % (src, link))
    target = _target_from_stat(st, link)
    if target.orphan is None and st.st_nlink == 0:
        raise RestoreError("%s (%s) is deleted but the scan did not find it again; rerun" % (src, link))
    return target


def _resolve_loop(loop):
    try:
        status = loop_mod.loop_status(loop)
    except OSError as exc:
        raise RestoreError("cannot query %s: %s (is it a bound loop device? see losetup -a)" % (loop, exc.strerror))
    dev, ino = status["backing_dev"], status["backing_ino"]
    orphan = scan_mod.find_orphan(dev, ino)
    if orphan is not None:
        return Target(dev, ino, orphan=orphan)
    name = status.get("file_name") or None
    return Target(dev, ino, orphan=None, nlink=-1, path=name)


def resolve_inode(dev, ino):
    orphan = scan_mod.find_orphan(dev, ino)
    if orphan is not None:
        return Target(dev, ino, orphan=orphan)
    return Target(dev, ino, orphan=None, nlink=-1)


# ----------------------------------------------------------- destination

def split_dest(dest):
    """(anchor, parent components, name). A destination under
    /proc/PID/root/ is resolved inside that process's mount namespace: the
    magic link /proc/PID/root is the one link followed on purpose."""
    if not dest or not dest.startswith("/"):
        raise RestoreError("dest %r must be an absolute path" % (dest,))
    anchor = "/"
    rest = dest
    m = _HOLDER_ROOT.match(dest)
    if m:
        anchor = "/proc/%s/root" % m.group(1)
        rest = dest[len(anchor):]
    comps = [c for c in rest.split("/") if c]
    if any(c in (".", "..") for c in comps):
        raise RestoreError("dest %s contains '.' or '..'; give the plain absolute path" % dest)
    if not comps:
        raise RestoreError("dest %s names a directory, not a file; give the full path of the new name" % dest)
    if len(comps[-1].encode("utf-8", "surrogateescape")) > 255:
        raise RestoreError("the last component of dest %s is longer than 255 bytes" % dest)
    return anchor, comps[:-1], comps[-1]


class DestDir(object):
    """The destination's parent directory, opened without following links.

    `fd` is None only in check mode when parents are missing; `missing`
    lists the directories that would be created."""

    def __init__(self, dest, create_parents, check_mode):
        self.dest = dest
        self.anchor, parents, self.name = split_dest(dest)
        self.fd = None
        self.missing = []
        self.created = []
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            fd = os.open(self.anchor, flags)
        except OSError as exc:
            raise RestoreError("cannot open %s: %s (has that process exited?)" % (self.anchor, exc.strerror))
        walked = self.anchor.rstrip("/")
        try:
            for i, comp in enumerate(parents):
                here = walked + "/" + comp
                try:
                    nfd = os.open(comp, flags | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        if not create_parents:
                            raise RestoreError(
                                "the directory %s does not exist: create it, set create_parents: true, "
                                "or choose another dest" % here)
                        if check_mode:
                            self.vfs = os.fstatvfs(fd)
                            base = self.anchor.rstrip("/")
                            self.missing = [base + "/" + "/".join(parents[:j + 1]) for j in range(i, len(parents))]
                            self.st = os.fstat(fd)
                            os.close(fd)
                            fd = None
                            return
                        try:
                            os.mkdir(comp, 0o755, dir_fd=fd)
                            self.created.append(here)
                        except FileExistsError:
                            pass
                        nfd = os.open(comp, flags | os.O_NOFOLLOW, dir_fd=fd)
                    elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise RestoreError(self._not_a_dir(fd, comp, here))
                    else:
                        raise RestoreError("cannot open directory %s: %s" % (here, exc.strerror))
                os.close(fd)
                fd = nfd
                walked = here
            self.fd = fd
            self.st = os.fstat(fd)
            self.vfs = os.fstatvfs(fd)
            self.path = walked or "/"
            fd = None
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _not_a_dir(fd, comp, here):
        try:
            st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            try:
                where = os.readlink(comp, dir_fd=fd)
            except OSError:
                where = "?"
            return ("%s is a symbolic link (to %s): frelink never follows symlinks in dest; give the real "
                    "directory path instead" % (here, where))
        return "%s is not a directory; choose another dest" % here

    def lstat_name(self):
        if self.fd is None:
            return None
        try:
            return os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------- the source

def open_source(target):
    """An fd on the orphan itself, checked to be the very inode selected
    (the pid may have been reused since the scan)."""
    path = target.open_path
    if not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise RestoreError("cannot open %s for %s: %s (the holder may have closed it; rerun to find its "
                           "current holders)" % (path, target.path, exc.strerror))
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (target.dev, target.ino):
        os.close(fd)
        raise RestoreError("%s no longer refers to %s (inode %s): the holder changed since the scan; rerun"
                           % (path, target.path, target.ino))
    return fd


def _hash_fd(fd, length=None):
    """sha256 and length of the first `length` bytes of fd (all of it when
    None), read from offset 0."""
    digest = hashlib.sha256()
    offset = 0
    while length is None or offset < length:
        want = CHUNK if length is None else min(CHUNK, length - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest(), offset


def _copy_data(src_fd, dst_fd, length):
    """Copies the first `length` bytes (the size seen before the copy: a file
    that keeps growing cannot make it run forever), keeping holes (all-zero
    chunks are skipped); returns sha256 and length of the bytes copied."""
    digest = hashlib.sha256()
    offset = 0
    while offset < length:
        chunk = os.pread(src_fd, min(CHUNK, length - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        if chunk != _ZERO_CHUNK[:len(chunk)]:
            view = memoryview(chunk)
            done = 0
            while done < len(chunk):
                done += os.pwrite(dst_fd, view[done:], offset + done)
        offset += len(chunk)
    os.ftruncate(dst_fd, offset)
    return digest.hexdigest(), offset


_LIBC = []


def _renameat2():
    if not _LIBC:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _LIBC.append(getattr(libc, "renameat2", None))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def commit_noreplace(dir_fd, tmp_name, name):
    """Gives the temporary file its final name; never replaces one."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        res = renameat2(dir_fd, os.fsencode(tmp_name), dir_fd, os.fsencode(name), RENAME_NOREPLACE)
        if res == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), name)
    # no RENAME_NOREPLACE here: link() also fails with EEXIST instead of replacing
    os.link(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(tmp_name, dir_fd=dir_fd)


def _stat_key(st):
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def duplicate(method, src_fd, dest_dir, target, retries):
    """Reflink (FICLONE) or copy src_fd into a new file dest_dir.name.

    The result is only committed when the source stayed the same during the
    whole operation: its size/mtime/ctime did not move, and reading it again
    after the copy gives the same sha256 as the bytes in the copy (which makes
    the copy equal to the source as it was at the end of the copy). Otherwise
    the temporary file is removed and the attempt repeated."""
    dir_fd, name = dest_dir.fd, dest_dir.name
    reasons = []
    for attempt in range(1, retries + 1):
        before = os.fstat(src_fd)
        tmp_name = ".%s.frelink-%d-%d.tmp" % (name[:200], os.getpid(), attempt)
        tmp_fd = os.open(tmp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
        committed = False
        try:
            if method == "reflink":
                try:
                    fcntl.ioctl(tmp_fd, FICLONE, src_fd)
                except OSError as exc:
                    raise RestoreError(_reflink_refusal(exc, target, dest_dir), errno=exc.errno)
                copy_sum, copy_len = _hash_fd(tmp_fd)
            else:
                copy_sum, copy_len = _copy_data(src_fd, tmp_fd, before.st_size)
            os.fsync(tmp_fd)
            src_sum, src_len = _hash_fd(src_fd, before.st_size)
            after = os.fstat(src_fd)
            if _stat_key(before) != _stat_key(after):
                reasons.append("attempt %d: the source changed (size %d -> %d, mtime/ctime moved)"
                               % (attempt, before.st_size, after.st_size))
                continue
            if (src_sum, src_len) != (copy_sum, copy_len):
                reasons.append("attempt %d: the source read again differs from the copy" % attempt)
                continue
            _copy_metadata(tmp_fd, after)
            os.fsync(tmp_fd)
            try:
                commit_noreplace(dir_fd, tmp_name, name)
            except FileExistsError:
                raise RestoreError("%s appeared while frelink was copying; nothing was overwritten, the "
                                   "copy was removed; choose another dest" % dest_dir.dest)
            committed = True
            os.fsync(dir_fd)
            return {
                "sha256": copy_sum, "source_sha256": src_sum, "size": copy_len, "attempts": attempt,
                "source_unchanged": True,
            }
        finally:
            os.close(tmp_fd)
            if not committed:
                try:
                    os.unlink(tmp_name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
    raise RestoreError(
        "%s of %s was not committed: the file kept changing while it was read, in each of %d attempts (%s). "
        "A torn copy is never kept. Pause or stop the writer and retry, raise copy_retries, or restore it "
        "in place with method: link (kernel module, role %s)"
        % (method, target.path, retries, "; ".join(reasons), KMOD_ROLE), attempts=retries)


def _copy_metadata(fd, st):
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the copy belongs to the caller
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _reflink_refusal(exc, target, dest_dir):
    if exc.errno == errno.EXDEV:
        why = "dest %s is on another filesystem than the file" % dest_dir.dest
    elif exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
        why = "the %s filesystem does not support reflinks (FICLONE: %s)" % (
            (target.orphan or {}).get("fstype") or "destination", exc.strerror)
    else:
        why = "FICLONE failed: %s" % exc.strerror
    return "reflink of %s to %s refused: %s; use method: copy (new inode, verified) instead" % (
        target.path, dest_dir.dest, why)


def content_equal(src_fd, dest_dir, dest_st):
    """Whether the existing regular file dest has exactly the source's bytes
    (idempotence of copy/reflink: the copy is another inode)."""
    if not stat.S_ISREG(dest_st.st_mode) or os.fstat(src_fd).st_size != dest_st.st_size:
        return None
    fd = os.open(dest_dir.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dest_dir.fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dest_st.st_dev, dest_st.st_ino):
            return None
        dest_sum = _hash_fd(fd)
    finally:
        os.close(fd)
    return dest_sum if _hash_fd(src_fd) == dest_sum else None


# ------------------------------------------------------------ one restore

class Options(object):
    def __init__(self, method="auto", fallback=(), create_parents=False, copy_retries=3):
        if method not in METHODS:
            raise RestoreError("method must be one of %s" % ", ".join(METHODS))
        bad = [f for f in fallback or () if f not in FALLBACKS]
        if bad:
            raise RestoreError("fallback may only list %s, not %s" % (", ".join(FALLBACKS), ", ".join(bad)))
        if copy_retries < 1:
            raise RestoreError("copy_retries must be at least 1")
        self.method = method
        self.fallback = list(fallback or ())
        self.create_parents = create_parents
        self.copy_retries = copy_retries


def _base_result(target, dest):
    res = {
        "dest": dest,
        "path": target.path,
        "dev": target.dev,
        "device": device_name(target.dev),
        "ino": target.ino,
        "size": target.size,
        "changed": False,
    }
    return res


def _link_obstacle(target, dest_dir):
    """Why a relink cannot be done, or None."""
    if dest_dir.st.st_dev != target.dev:
        return ("dest %s is on another filesystem (device %s) than the file (device %s, %s); a name can only be "
                "given on the file's own filesystem: choose a dest there, or use method: copy"
                % (dest_dir.dest, device_name(dest_dir.st.st_dev), device_name(target.dev),
                   (target.orphan or {}).get("mount_point") or "?"))
    if not kmod_abi.module_loaded():
        return ("the frelink kernel module is not loaded (%s is missing): load it with the role %s, or accept "
                "a copy with a new identity (method: copy, or method: auto with fallback: [reflink, copy])"
                % (kmod_abi.DEVICE_PATH, KMOD_ROLE))
    return None


def _source_obstacle(method, target):
    if not target.open_path:
        return ("%s of %s is impossible: no process has it open or mapped (held only by %s), so its data can only "
                "be reached through the kernel module: use method: link (role %s)"
                % (method, target.path, ", ".join(h.get("kind", "?") for h in (target.orphan or {}).get("holders") or [])
                   or "the kernel", KMOD_ROLE))
    return None


def _reflink_obstacle(target, dest_dir):
    obstacle = _source_obstacle("reflink", target)
    if obstacle:
        return obstacle
    if dest_dir.st.st_dev != target.dev:
        return "reflink needs dest on the file's own filesystem (%s); dest %s is elsewhere: use method: copy" % (
            (target.orphan or {}).get("mount_point") or device_name(target.dev), dest_dir.dest)
    return None


def _copy_obstacle(target, dest_dir):
    obstacle = _source_obstacle("copy", target)
    if obstacle:
        return obstacle
    orphan = target.orphan or {}
    needed = orphan.get("allocated")
    if needed is None:
        needed = target.size or 0
    free = dest_dir.vfs.f_bavail * dest_dir.vfs.f_frsize
    if needed > free:
        return ("copy of %s needs %d bytes but only %d are free on the filesystem of %s: free space, choose a dest "
                "on a larger filesystem, or relink it in place with method: link" % (
                    target.path, needed, free, dest_dir.dest))
    return None


def plan_methods(target, dest_dir, opts, check_mode):
    """The methods to try, in order (more than one only for method auto,
    where a reflink the filesystem turns down falls through to the next
    fallback), or a RestoreError explaining every obstacle."""
    checks = {"link": _link_obstacle, "reflink": _reflink_obstacle, "copy": _copy_obstacle}
    if opts.method != "auto":
        obstacle = checks[opts.method](target, dest_dir)
        if obstacle:
            raise RestoreError(obstacle)
        return [opts.method]
    obstacle = _link_obstacle(target, dest_dir)
    if not obstacle:
        return ["link"]
    obstacles = ["link: " + obstacle]
    plan = []
    for fallback in opts.fallback:
        obstacle = checks[fallback](target, dest_dir)
        if not obstacle and fallback == "reflink" and check_mode:
            fstype = (target.orphan or {}).get("fstype")
            predicted = ((target.orphan or {}).get("restore") or {}).get("reflink")
            if predicted is None:
                predicted = fstype in REFLINK_FSTYPES
            if not predicted:
                obstacle = "the %s filesystem is not expected to support reflinks" % fstype
        if obstacle:
            obstacles.append("%s: %s" % (fallback, obstacle))
        else:
            plan.append(fallback)
    if plan:
        target.fallback_reasons = obstacles
        return plan
    if not opts.fallback:
        obstacles.append("no fallback allowed: a reflink or copy is a new file (new inode; the holder keeps "
                         "writing to the deleted one), so it is opt-in with fallback: [reflink, copy]")
    raise RestoreError("cannot restore %s to %s. %s" % (target.path, dest_dir.dest, " | ".join(obstacles)))


def _diff(dest, before, after):
    return {"before_header": dest, "after_header": dest, "before": before, "after": after}


def _state_text(st=None, extra=None):
    if st is None:
        return "state: absent\n"
    lines = ["state: %s" % ("file" if stat.S_ISREG(st.st_mode) else "other"),
             "device: %s" % device_name(st.st_dev), "inode: %d" % st.st_ino, "size: %d" % st.st_size]
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
                               % (device_name(target.dev), target.ino))
        if not dest:
            raise RestoreError("inode %s on device %s has no known original path and no dest was given; set dest"
                               % (target.ino, device_name(target.dev)))
    res = _base_result(target, dest)
    dest_dir = DestDir(dest, opts.create_parents, check_mode)
    src_fd = None
    try:
        existing = dest_dir.lstat_name()
        if existing is not None:
            if stat.S_ISLNK(existing.st_mode):
                raise RestoreError("dest %s is a symbolic link: frelink never follows or replaces it; remove it "
                                   "or choose another dest" % dest)
            if (existing.st_dev, existing.st_ino) == (target.dev, target.ino):
                res.update(status="already_restored", method="link", identity_preserved=True,
                           verification={"dest_dev": existing.st_dev, "dest_ino": existing.st_ino,
                                         "same_inode": True})
                res["msg"] = "%s already names device %s inode %d" % (dest, res["device"], target.ino)
                return res
            same = None
            if target.is_orphan and (opts.method in FALLBACKS or (opts.method == "auto" and opts.fallback)):
                src_fd = open_source(target)
                if src_fd is not None:
                    same = content_equal(src_fd, dest_dir, existing)
            if same is not None:
                res.update(status="already_copied", method="copy", identity_preserved=False,
                           verification={"sha256": same[0], "source_sha256": same[0], "size": same[1]})
                res["msg"] = ("%s already holds an identical copy (sha256 %s) of the deleted file, which is still "
                              "held under its old identity" % (dest, same[0]))
                return res
            raise RestoreError(
                "dest %s exists (device %s inode %d, %d bytes) and is not the deleted file %s; nothing was "
                "touched: choose another dest, e.g. %s.restored" % (
                    dest, device_name(existing.st_dev), existing.st_ino, existing.st_size,
                    _describe(target.orphan) if target.orphan else "device %s inode %d" % (res["device"], target.ino),
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
        plan = plan_methods(target, dest_dir, opts, check_mode)
        method = plan[0]
        res["method"] = method
        res["identity_preserved"] = method == "link"
        if getattr(target, "fallback_reasons", None):
            res["fallback_reasons"] = list(target.fallback_reasons)
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
        if method == "link":
            res["verification"] = _relink(target, dest_dir)
        else:
            if src_fd is None:
                src_fd = open_source(target)
            for i, method in enumerate(plan):
                try:
                    res["verification"] = duplicate(method, src_fd, dest_dir, target, opts.copy_retries)
                    break
                except RestoreError as exc:
                    if method != "reflink" or i + 1 == len(plan) or exc.details.get("errno") is None:
                        raise
                    res.setdefault("fallback_reasons", []).append(exc.msg)
            res["method"] = method
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
    try:
        if src_fd is not None:
            if os.fstat(src_fd).st_nlink != 0:
                raise RestoreError("%s got a name while frelink worked on it; rerun to see where" % target.path)
            kmod_abi.relink_by_fd(src_fd, dest_dir.fd, dest_dir.name)
        else:
            kmod_abi.relink_by_inode(target.dev, target.ino, dest_dir.fd, dest_dir.name)
    except kmod_abi.RelinkError as exc:
        raise RestoreError("the kernel module refused to relink %s to %s: %s (%s)" % (
            target.path, dest_dir.dest, getattr(exc, "hint", None) or exc.strerror,
            errno.errorcode.get(exc.errno, exc.errno)), errno=exc.errno)
    finally:
        if src_fd is not None:
            os.close(src_fd)
    os.fsync(dest_dir.fd)
    st = dest_dir.lstat_name()
    if st is None or (st.st_dev, st.st_ino) != (target.dev, target.ino):
        raise RestoreError("after the relink %s does not name device %s inode %d; report this as a bug"
                           % (dest_dir.dest, device_name(target.dev), target.ino))
    return {"dest_dev": st.st_dev, "dest_ino": st.st_ino, "same_inode": True, "nlink": st.st_nlink,
            "size": st.st_size}


# ---------------------------------------------------------------- the task

def dest_in_dir(dest_dir, original, layout):
    if layout == "flat":
        return dest_dir.rstrip("/") + "/" + original.rstrip("/").rsplit("/", 1)[-1]
    return dest_dir.rstrip("/") + "/" + original.lstrip("/")


def run(params, check_mode=False):
    """Everything the module does; returns the module result (without
    failed) and a list of failure messages."""
    opts = Options(params.get("method") or "auto", params.get("fallback") or (),
                   bool(params.get("create_parents")), int(params.get("copy_retries") or 3))
    dest = params.get("dest")
    dest_dir = params.get("dest_dir")
    layout = params.get("layout") or "tree"
    items = []  # (selector text, Target or RestoreError)
    scan_info = {}
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
            items.append((path, Target(group[0]["dev"], group[0]["ino"], orphan=group[0])))
    elif params.get("path"):
        path = params["path"]
        group, scan_info = orphans_by_path(path)
        if len(group) > 1:
            items.append((path, _ambiguity(path, group)))
        elif group:
            items.append((path, Target(group[0]["dev"], group[0]["ino"], orphan=group[0])))
        else:
            probe = dest or (dest_in_dir(dest_dir, path, layout) if dest_dir else path)
            items.append((path, _absent_by_path(path, probe)))
    elif params.get("src"):
        items.append((params["src"], _guard(resolve_src, params["src"])))
    else:
        dev = parse_device(params.get("device"))
        selector = "%s/%s" % (device_name(dev), params.get("inode"))
        items.append((selector, _guard(resolve_inode, dev, int(params["inode"]))))
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
            item.update(restore_target(target, this_dest, opts, check_mode))
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
        out["msg"] = "%d of %d matching deleted files %s%s" % (
            len(done), len(results), "would be restored" if check_mode else "restored",
            ", %d failed" % len(failures) if failures else "")
    return out, failures


def _guard(func, *args):
    try:
        return func(*args)
    except RestoreError as exc:
        return exc


def _ambiguity(path, group):
    return RestoreError(
        "%d deleted files had the original path %s; frelink does not guess: select one with device+inode (or "
        "src) from the candidates: %s" % (len(group), path, "; ".join(_describe(o) for o in group)),
        candidates=candidate_list(group))


def _absent_by_path(path, probe):
    """No orphan with this original path: fine when dest exists (restored
    before), an error otherwise."""
    try:
        st = DestDir(probe, False, True)
        existing = st.lstat_name()
        st.close()
    except RestoreError:
        existing = None
    if existing is not None and not stat.S_ISLNK(existing.st_mode):
        return {"changed": False, "status": "nothing_to_restore", "dest": probe, "path": path,
                "msg": "no deleted file that is still held has the original path %s, and %s exists "
                       "(restored before?)" % (path, probe)}
    return RestoreError("no deleted file that is still held has the original path %s (its last holder may have "
                        "exited; list what is recoverable with frelink_facts)" % path)
