"""A debug kernel built from Debian's own kernel source, for the judges of the kmod suite.

Debian's stock kernels have no lockdep and no KASAN, so lock order, sleeping in atomic
context and use-after-free go unseen there. This builds the kernel of SUITE's image
(linux-source-X.Y of the same Debian version, from the archive) once, in SUITE's chroot
with its own gcc, from x86_64_defconfig + kvm_guest.config + DEBUG_CONFIG below: the
judges on, everything the kmod suite mounts built in (no initramfs, no modules to
install), and big subsystems the guest never uses off, so that it builds in minutes.

Cached under the suite's build dir (the chroot's /build):

    debug-kernel-<key>/linux/    the configured, built tree (modules build against it
                                 with make -C linux M=..., as DKMS does)
    debug-kernel-<key>/bzImage   what QEMU boots (-kernel, no -initrd)
    debug-kernel-<key>/build.log
    debug-kernel-<key>.ready     written last; <key> hashes the recipe, the source
                                 version and the compiler, so a change rebuilds
"""

import ctypes
import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .chroot import build_root, chroot_run
from .image import prepare
from .util import HarnessError, file_lock, progress, remove_tree, write_atomic

SUITE = "sid"
LOCALVERSION = "-frelink-debug"

# Bump when the build steps below change in a way DEBUG_CONFIG does not show.
RECIPE_FORMAT = 1

# Options the result must have (checked after olddefconfig: a name the kernel does not
# know, or one whose dependencies are off, fails the build instead of vanishing).
DEBUG_CONFIG = {
    # the judges
    "PROVE_LOCKING": "y",
    "DEBUG_ATOMIC_SLEEP": "y",
    "DEBUG_LOCKDEP": "n",
    "KASAN": "y",
    "KASAN_GENERIC": "y",
    "KASAN_INLINE": "y",
    "KFENCE": "y",
    "DEBUG_LIST": "y",
    "DEBUG_OBJECTS": "y",
    "DEBUG_OBJECTS_FREE": "y",
    "DEBUG_OBJECTS_WORK": "y",
    "DEBUG_OBJECTS_RCU_HEAD": "y",
    "DEBUG_VM": "y",
    "DETECT_HUNG_TASK": "y",
    "SOFTLOCKUP_DETECTOR": "y",
    "BUG_ON_DATA_CORRUPTION": "y",
    "DEBUG_KERNEL": "y",
    # a module built against this tree, loaded and unloaded
    "MODULES": "y",
    "MODULE_UNLOAD": "y",
    "MODULE_SIG": "n",
    # what the guest boots from and the kmod suite mounts, all built in
    "VIRTIO_PCI": "y",
    "VIRTIO_BLK": "y",
    "VIRTIO_NET": "y",
    "BLK_DEV_LOOP": "y",
    "EXT4_FS": "y",
    "XFS_FS": "y",
    "BTRFS_FS": "y",
    "JFS_FS": "y",
    "VFAT_FS": "y",
    "NLS_CODEPAGE_437": "y",
    "NLS_ISO8859_1": "y",
    "TMPFS": "y",
    "TMPFS_POSIX_ACL": "y",
    "TMPFS_XATTR": "y",
    "HUGETLBFS": "y",
    "OVERLAY_FS": "y",
    "FUSE_FS": "y",
    "DEVTMPFS": "y",
    "DEVTMPFS_MOUNT": "y",
    "FHANDLE": "y",
    "CGROUPS": "y",
    "CGROUP_BPF": "y",
    "BPF_SYSCALL": "y",
    "AUTOFS_FS": "y",
    "SECCOMP": "y",
    "SERIAL_8250_CONSOLE": "y",
    "DEBUG_INFO_NONE": "y",
}

# Off when the kernel lets them be (not checked: something may select one): what the
# guest never uses, most of the compile time of a defconfig.
TRIM_CONFIG = (
    "DRM", "SOUND", "USB_SUPPORT", "WIRELESS", "WLAN", "RFKILL", "BT", "CFG80211", "NETFILTER",
    "NET_SCHED", "IPV6", "IP_MULTICAST", "IP_PNP", "NET_9P", "9P_FS", "NFS_FS", "NETWORK_FILESYSTEMS",
    "ETHERNET", "ATA", "SCSI", "MD", "AGP", "HID", "VT", "INPUT_KEYBOARD", "INPUT_MOUSE",
    "INPUT_JOYSTICK", "INPUT_TOUCHSCREEN", "MACINTOSH_DRIVERS", "PCCARD", "EFI", "KEXEC",
    "CRASH_DUMP", "HIBERNATION", "SUSPEND", "KVM", "INTEL_IOMMU", "AMD_IOMMU", "NUMA", "KPROBES",
    "FTRACE", "PROFILING", "AUDIT", "SECURITY", "QUOTA", "XFS_ONLINE_SCRUB", "MICROCODE",
    "CPU_FREQ", "X86_MCE", "LOCALVERSION_AUTO",
)


@dataclasses.dataclass(frozen=True)
class DebugKernel:
    """A built debug kernel: boot bzImage, build modules with make -C tree (chroot path)."""

    suite: str
    release: str
    source_version: str
    bzimage: Path
    tree: str          # the tree inside SUITE's chroot, for make -C
    host_tree: Path    # the same on the host
    build_seconds: float


def _source_version(suite):
    """(package, version) of linux-source matching SUITE's image kernel."""
    env = prepare(suite)
    version = chroot_run(suite, ["dpkg-query", "-W", "-f", "${Version}",
                                 f"linux-image-{env.kernel_release}"]).stdout.strip()
    match = re.match(r"(\d+\.\d+)", env.kernel_release)
    if not version or not match:
        raise HarnessError(f"{suite}: cannot tell the Debian version of kernel {env.kernel_release}")
    return f"linux-source-{match.group(1)}", version


def _fragment() -> str:
    wanted = {**{name: "n" for name in TRIM_CONFIG}, **DEBUG_CONFIG}
    return "".join(f"CONFIG_{name}={value}\n" if value != "n" else f"# CONFIG_{name} is not set\n"
                   for name, value in wanted.items())


def _key(suite, package, version, compiler):
    recipe = [RECIPE_FORMAT, suite, package, version, compiler, LOCALVERSION, sorted(DEBUG_CONFIG.items()),
              sorted(TRIM_CONFIG)]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]


def _check_config(config: Path):
    have = {}
    for line in config.read_text().splitlines():
        match = re.match(r"CONFIG_(\w+)=(.*)", line) or re.match(r"# CONFIG_(\w+) is not set", line)
        if match:
            have[match.group(1)] = match.group(2) if match.lastindex == 2 else "n"
    wrong = {name: (want, have.get(name, "n")) for name, want in DEBUG_CONFIG.items()
             if have.get(name, "n") != want}
    if wrong:
        shown = ", ".join(f"{name}={got} (wanted {want})" for name, (want, got) in sorted(wrong.items()))
        raise HarnessError(f"the debug kernel's .config lacks options it must have: {shown}; "
                           "adjust DEBUG_CONFIG in harness/debug_kernel.py to this kernel version")


def _run(suite, argv, log: Path, cwd, timeout=7200):
    started = time.monotonic()
    proc = chroot_run(suite, argv, cwd=cwd, check=False, timeout=timeout)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}  ({time.monotonic() - started:.0f} s, exit {proc.returncode})\n")
        out.write(proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise HarnessError(f"debug kernel: {' '.join(argv)} failed (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}\nfull log: {log}")
    return proc


def debug_kernel(suite=SUITE) -> DebugKernel:
    """The cached debug kernel of SUITE, built first if missing or if its recipe changed."""
    package, version = _source_version(suite)
    compiler = chroot_run(suite, ["gcc", "--version"]).stdout.splitlines()[0]
    key = _key(suite, package, version, compiler)
    root = build_root(suite)
    name = f"debug-kernel-{key}"
    top, ready = root / name, root / f"{name}.ready"
    with file_lock(root / "debug-kernel.lock", suite, "waiting for another build of the debug kernel"):
        if not (ready.exists() and (top / "bzImage").exists()):
            _build(suite, package, version, top, name)
            write_atomic(ready, json.dumps({"built_seconds": _built_seconds(top)}) + "\n")
            for stale in root.glob("debug-kernel-*"):  # older recipes: gigabytes each
                if stale.name in (name, ready.name, "debug-kernel.lock"):
                    continue
                if stale.is_dir():
                    remove_tree(stale)
                else:
                    stale.unlink()
    meta = json.loads(ready.read_text())
    release = (top / "linux" / "include" / "config" / "kernel.release").read_text().strip()
    return DebugKernel(suite=suite, release=release, source_version=version, bzimage=top / "bzImage",
                       tree=f"/build/{name}/linux", host_tree=top / "linux",
                       build_seconds=meta["built_seconds"])


def build_in_background(suite=SUITE):
    """Start debug_kernel(SUITE) in a niced child process and return it (it exits at once
    when the kernel is cached). A test session calls this first, so that a one-time build
    overlaps the tests that wait on downloads and guests instead of adding its whole
    time; debug_kernel() in the test then waits for it (the build lock) or builds itself
    if the child died. The child dies with its parent; its output goes to a log file."""
    log = build_root(suite) / "debug-kernel-background.log"

    def die_with_parent():
        os.nice(10)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    repo = Path(__file__).resolve().parents[1]
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", f"import harness; harness.debug_kernel({suite!r})"],
                                cwd=repo, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)


def _built_seconds(top: Path) -> float:
    return float((top / "build.seconds").read_text())


def _build(suite, package, version, top: Path, name: str):
    started = time.monotonic()
    remove_tree(top)
    top.mkdir(parents=True)
    log = top / "build.log"
    progress(suite, f"building the debug kernel from {package} {version} (one time, ~15-30 min on 2 cores; "
                    f"log: {log})")
    chroot_dir = f"/build/{name}"
    proc = _run(suite, ["apt-get", "download", "-q", f"{package}={version}"], log, chroot_dir, timeout=1800)
    debs = sorted(top.glob(f"{package}_*.deb"))
    if not debs:
        raise HarnessError(f"debug kernel: apt-get download {package}={version} gave no .deb: {proc.stdout}")
    _run(suite, ["dpkg-deb", "-x", debs[0].name, "pkg"], log, chroot_dir)
    tarballs = sorted((top / "pkg" / "usr" / "src").glob(f"{package}.tar.*"))
    if not tarballs:
        raise HarnessError(f"debug kernel: {debs[0].name} holds no /usr/src/{package}.tar.*")
    _run(suite, ["tar", "-xf", f"pkg/usr/src/{tarballs[0].name}"], log, chroot_dir)
    extracted = top / package
    extracted.rename(top / "linux")
    remove_tree(top / "pkg")
    debs[0].unlink()
    (top / "debug.config").write_text(_fragment())
    tree = f"{chroot_dir}/linux"
    make = ["make", "-j2", f"LOCALVERSION={LOCALVERSION}"]
    _run(suite, make + ["x86_64_defconfig", "kvm_guest.config"], log, tree)
    _run(suite, ["scripts/kconfig/merge_config.sh", "-m", ".config", "../debug.config"], log, tree)
    _run(suite, make + ["olddefconfig"], log, tree)
    _check_config(top / "linux" / ".config")
    _run(suite, make + ["bzImage", "modules", "modules_prepare"], log, tree)
    subprocess.run(["cp", str(top / "linux" / "arch" / "x86" / "boot" / "bzImage"), str(top / "bzImage")],
                   check=True)
    seconds = time.monotonic() - started
    (top / "build.seconds").write_text(f"{seconds:.0f}\n")
    progress(suite, f"debug kernel built in {seconds:.0f} s")
