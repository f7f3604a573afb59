"""Small helpers shared by the harness modules: cache paths, progress, locks."""

import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


class HarnessError(RuntimeError):
    """The harness could not provide what was asked; the message says why and what to do."""


def cache_root() -> Path:
    root = os.environ.get("FRELINK_CACHE") or os.path.join(Path.home(), ".cache", "frelink")
    return Path(root)


def suite_dir(suite: str) -> Path:
    return cache_root() / suite


def progress(suite: str, message: str) -> None:
    print(f"harness: {suite}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def file_lock(path: Path, suite: str = "", waiting: str = ""):
    """Exclusive flock on PATH; tells the user when it has to wait for another process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                progress(suite, waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def mounts_below(path: Path):
    """Mount points at or below PATH in this mount namespace, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) tree; never follows leftover bind mounts into the host."""
    if not path.exists() and not path.is_symlink():
        return
    for mount_point in mounts_below(path):
        subprocess.run(["umount", "-l", mount_point], check=False)
    if mounts_below(path):
        raise HarnessError(f"{path} still has mounts below it; unmount them (umount -R) and retry")
    if path.is_dir() and not path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
    else:
        path.unlink()


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise HarnessError(
            "missing host tools: " + ", ".join(missing)
            + "; install them with scripts/bootstrap.sh (it installs the Debian packages the harness needs)"
        )


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output captured)"
    return "\n".join(text.splitlines()[-lines:])


CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def namespace_chroot(rootfs, argv, cwd="/", variables=None, build_dir=None):
    """Command line running ARGV in ROOTFS inside a private mount namespace.

    /dev, /proc, /sys and a fresh /tmp (and BUILD_DIR at /build) are mounted for the
    command only: they vanish with the namespace, even when the caller is killed.
    """
    values = {"PATH": CHROOT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "TERM": "dumb"}
    values.update(variables or {})
    # the guest's resolv.conf names QEMU's resolver; on the host the chroot uses the host's
    steps = ['mount --rbind /dev "$R/dev"', 'mount -t proc proc "$R/proc"',
             'mount -t sysfs sysfs "$R/sys"', 'mount -t tmpfs tmpfs "$R/tmp"',
             '{ [ ! -f /etc/resolv.conf ] || [ ! -f "$R/etc/resolv.conf" ] || '
             'mount --bind /etc/resolv.conf "$R/etc/resolv.conf"; }']
    if build_dir is not None:
        steps.append('mkdir -p "$R/build" && mount --bind "$B" "$R/build"')
    inner = ["/usr/bin/env", "-i"] + [f"{key}={value}" for key, value in values.items()]
    inner += ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", str(cwd)]
    script = " && ".join(steps) + ' && exec chroot "$R" ' + shlex.join(inner + [str(a) for a in argv])
    cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "R": str(rootfs), "B": str(build_dir or "")}
    return cmd, env
