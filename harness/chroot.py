"""Run commands in a suite's rootfs on the host, at native speed (compilers, DKMS-like builds).

Each call gets its own private mount namespace (unshare --mount) in which /dev, /proc,
/sys and the per-suite build dir are mounted into the rootfs; when the command exits,
the namespace and its mounts vanish with it, also when the caller is killed, so nothing
is ever left mounted on the host.
"""

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from .image import prepare
from .util import HarnessError, file_lock, namespace_chroot, require_tools, suite_dir

# kbuild outputs: never copied from a source tree into a build dir
KBUILD_PRODUCTS = ("*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "*.a", "Module.symvers",
                   "modules.order", ".tmp_versions", ".cache.mk", "*.dwo")


class CommandError(subprocess.CalledProcessError):
    """A command failed; str() shows the command, its exit code, stdout and stderr."""

    def __str__(self):
        text = super().__str__()
        for label, stream in (("stdout", self.stdout), ("stderr", self.stderr)):
            if stream:
                lines = stream.splitlines()
                shown = "\n".join(lines[-60:])
                text += f"\n--- {label} ({len(lines)} lines, last 60) ---\n{shown}"
        return text


def build_root(suite: str) -> Path:
    """Host directory mounted at /build inside the suite's chroot."""
    path = suite_dir(suite) / "build"
    path.mkdir(parents=True, exist_ok=True)
    return path


def chroot_run(suite, argv, cwd=None, check=True, input=None, timeout=None, env=None):
    """Run ARGV (a list) inside SUITE's rootfs; cwd is a path inside the chroot.

    The host directory build_root(suite) is visible as /build. Returns a text
    CompletedProcess; raises CommandError (with the output) when check and it fails.
    """
    require_tools("unshare", "chroot", "mount")
    if isinstance(argv, (str, bytes)):
        raise TypeError("chroot_run takes an argument list; use ['sh', '-c', script] for shell code")
    rootfs = prepare(suite).rootfs
    cmd, host_env = namespace_chroot(rootfs, argv, cwd or "/", env, build_root(suite))
    result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                            env=host_env, stdin=None if input is not None else subprocess.DEVNULL, check=False)
    result.args = list(argv)
    if check and result.returncode != 0:
        raise CommandError(result.returncode, list(argv), result.stdout, result.stderr)
    return result


def _ignored_files(src: Path):
    """Files git ignores in SRC (stale build products of another kernel), if SRC is in git."""
    try:
        probe = subprocess.run(
            ["git", "-C", str(src), "ls-files", "--others", "--ignored", "--exclude-standard",
             "--directory", "."],
            capture_output=True, text=True, check=False)
    except OSError:  # no git on this host: only the kbuild patterns apply
        return []
    if probe.returncode != 0:
        return []
    return [line.rstrip("/") for line in probe.stdout.splitlines() if line]


def build_module(suite, src_dir, make_args=(), kernel_tree=None):
    """Build the out-of-tree module in SRC_DIR for SUITE's kernel; return the .ko path.

    The source is copied to a per-suite build dir (build_root(suite)/<name>-<hash>),
    never built in place, and built as DKMS does by default:
    make KERNELRELEASE=<release> -C /lib/modules/<release>/build M=<dir> [make_args].
    With kernel_tree (a built kernel tree inside the chroot, e.g. the debug kernel's),
    make -C <kernel_tree> M=<dir> [make_args] instead, into a build dir of its own.
    """
    src = Path(src_dir).resolve()
    if not src.is_dir():
        raise HarnessError(f"module source {src} is not a directory")
    env = prepare(suite)
    name = f"{src.name}-{hashlib.sha256(str((src, kernel_tree)).encode()).hexdigest()[:8]}"
    host_dir = build_root(suite) / name
    with file_lock(build_root(suite) / f"{name}.lock", suite,
                   f"waiting for another build of {src} for {suite}"):
        excludes = [f"--exclude={pattern}" for pattern in KBUILD_PRODUCTS + tuple(
            "/" + path for path in _ignored_files(src))]
        subprocess.run(["rsync", "-a", "--delete", "--delete-excluded", *excludes,
                        f"{src}/", f"{host_dir}/"], check=True)
        release = env.kernel_release
        kbuild = ["-C", kernel_tree] if kernel_tree else [f"KERNELRELEASE={release}", "-C",
                                                          f"/lib/modules/{release}/build"]
        argv = ["make", "-j2", *kbuild, f"M=/build/{name}", *make_args]
        chroot_run(suite, argv, cwd=f"/build/{name}")
        modules = sorted(host_dir.rglob("*.ko"))
        if not modules:
            raise HarnessError(f"{suite}: make succeeded but produced no .ko in {host_dir}")
        if len(modules) > 1:
            wanted = [m for m in modules if m.stem == src.name]
            modules = wanted or modules
        return _keep(suite, modules[0])


def _keep(suite, module: Path) -> Path:
    """A copy of MODULE that no later build replaces (the next build of the same source,
    by a test running in parallel, empties the build dir while this one is still loading
    it), under build_root(suite)/built/<hash>/; copies older than a day are removed."""
    built = build_root(suite) / "built"
    digest = hashlib.sha256(module.read_bytes()).hexdigest()[:16]
    kept = built / digest / module.name
    if not kept.exists():
        for old in built.glob("*"):
            if old.is_dir() and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(kept.name + ".tmp")
        shutil.copyfile(module, tmp)
        os.replace(tmp, kept)
    os.utime(kept.parent)
    return kept
