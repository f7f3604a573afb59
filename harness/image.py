"""Build and cache one Debian guest image per suite (rootfs directory + qcow2 disk).

Cache layout, per suite, under ~/.cache/frelink/<suite>/ (FRELINK_CACHE overrides the root):

    image/rootfs/        the Debian tree, also used as the build chroot
    image/disk.qcow2     ext4 image of rootfs (no partition table, root=/dev/vda)
    image/vmlinuz, image/initrd.img, image/env.json
    ssh/id_ed25519       the key root and tester accept (generated once, kept across
                         rebuilds so running guests stay reachable; never committed)
    image.ready          the version key of the finished image, written last
    build/               out-of-tree module builds (see chroot.py)
    snapshot/            a saved booted state (see guest.py)

A build goes to image.new/ and replaces image/ only when complete; image.ready is
removed before and written after, so an interrupted build is rebuilt, never trusted.
"""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from . import archive, debian, rootfs as guest_fs
from .util import (HarnessError, cache_root, file_lock, namespace_chroot, progress, remove_tree, require_tools,
                   suite_dir, tail, write_atomic)

# Bump when the customisation below changes in a way an existing image lacks.
IMAGE_FORMAT = 3
DISK_SIZE = "8G"
HOSTNAME = "frelink-{suite}"

# Timers and services that would start work or wait at boot for nothing in a test VM.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily.service",
    "apt-daily-upgrade.timer", "apt-daily-upgrade.service",
    "systemd-networkd-wait-online.service", "systemd-firstboot.service",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
    "dpkg-db-backup.timer", "man-db.timer", "systemd-tmpfiles-clean.timer",
    # xfsprogs >= 6.x: background scrubbing, and (sid) a healer started on every xfs mount
    # that would keep test filesystems busy
    "xfs_scrub_all.timer", "xfs_healer_start.service", "xfs_healer@.service",
    "modprobe@drm.service",
)

# Emulated legacy devices nobody uses; their drivers only slow the boot down.
BLACKLISTED_MODULES = ("floppy", "pcspkr")

NETWORK_UNIT = """\
[Match]
Type=ether

[Network]
DHCP=ipv4
"""

# KFENCE's sampling interval on the stock kernels (its usual default; Debian ships 0)
KFENCE_SAMPLE_INTERVAL_MS = 100

# A small initramfs (just what mounts /dev/vda) unpacks and boots much faster under TCG.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic", "crc32c_intel")

SSHD_CONFIG = """\
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
"""


@dataclasses.dataclass(frozen=True)
class Env:
    """A prepared suite: what tests need to build for it and boot it."""

    suite: str
    rootfs: Path
    kernel_release: str
    vmlinuz: Path
    initrd: Path
    disk: Path
    ssh_key: Path
    key: str

    @property
    def cmdline(self) -> str:
        base = "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 mitigations=off"
        # Debian builds KFENCE in but samples nothing (interval 0): turn it on, so that
        # every guest test also samples allocations for memory errors (the kmod test
        # fails on any KFENCE report)
        if kernel_config_has(self.rootfs / "boot" / f"config-{self.kernel_release}", "CONFIG_KFENCE=y"):
            base += f" kfence.sample_interval={KFENCE_SAMPLE_INTERVAL_MS}"
        return base


@functools.lru_cache(maxsize=None)
def kernel_config_has(config: Path, line: str) -> bool:
    """Whether the kernel config file CONFIG has LINE (False when it is missing)."""
    try:
        return line in config.read_text().splitlines()
    except OSError:
        return False


def version_key(suite: str) -> str:
    recipe = {
        "format": IMAGE_FORMAT,
        "suite": suite,
        "packages": debian.PACKAGES,
        "sources": debian.apt_source_lines(suite),
        "apt": debian.apt_options(suite),
        "disk": DISK_SIZE,
    }
    if debian.apt_preferences(suite):  # only where there are (the other suites' keys stay)
        recipe["preferences"] = debian.apt_preferences(suite)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _paths(suite: str):
    base = suite_dir(suite)
    return base / "image", base / "image.new", base / "image.ready"


def _load(suite: str, key: str):
    image, _new, ready = _paths(suite)
    try:
        if ready.read_text().strip() != key:
            return None
        meta = json.loads((image / "env.json").read_text())
    except (OSError, ValueError):
        return None
    env = Env(
        suite=suite,
        rootfs=image / "rootfs",
        kernel_release=meta["kernel_release"],
        vmlinuz=image / "vmlinuz",
        initrd=image / "initrd.img",
        disk=image / "disk.qcow2",
        ssh_key=ssh_key_path(suite),
        key=key,
    )
    needed = (env.vmlinuz, env.initrd, env.disk, env.ssh_key, Path(f"{env.ssh_key}.pub"))
    if not all(path.exists() for path in needed) or not guest_fs.exists(env.rootfs, "/etc/os-release"):
        return None
    # an image that does not accept the current key is as good as missing
    if meta.get("ssh_pubkey") != Path(f"{env.ssh_key}.pub").read_text().strip():
        return None
    return env


def headers_makefile(release: str) -> str:
    """The file DKMS and kbuild need for RELEASE, as a path inside the guest."""
    return f"/lib/modules/{release}/build/Makefile"


def ssh_key_path(suite: str) -> Path:
    return suite_dir(suite) / "ssh" / "id_ed25519"


def _ensure_ssh_key(suite: str, log: Path) -> Path:
    key = ssh_key_path(suite)
    pub = key.with_name(key.name + ".pub")
    if key.exists() and pub.exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(key.name + ".tmp")
    tmp_pub = key.with_name(tmp.name + ".pub")
    for stale in (tmp, tmp_pub):
        if stale.exists():
            stale.unlink()
    _run_logged(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"frelink-{suite}",
                 "-f", tmp], log, "ssh-keygen", suite)
    os.replace(tmp_pub, pub)
    os.replace(tmp, key)
    return key


def prepare(suite: str, rebuild: bool = False) -> Env:
    """The suite's cached image, built first when missing, stale or half-built."""
    if suite not in debian.KERNEL_SUITES:
        raise HarnessError(f"unknown suite {suite!r}; choose one of {', '.join(debian.KERNEL_SUITES)}")
    key = version_key(suite)
    if not rebuild:
        env = _load(suite, key)
        if env:
            archive.check_image(env)
            return env
    with file_lock(suite_dir(suite) / "image.lock", suite,
                   "waiting for another process that is building this image"):
        if not rebuild:
            env = _load(suite, key)  # built by whoever held the lock
            if env:
                return env
        _build(suite, key)
        env = _load(suite, key)
        if env is None:
            raise HarnessError(f"image for {suite} was built but is incomplete; rerun with --rebuild")
        return env


def _run_logged(cmd, log: Path, what: str, suite: str, **kwargs):
    with open(log, "a") as out:
        out.write("\n$ " + " ".join(str(c) for c in cmd) + "\n")
        out.flush()
        result = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False, **kwargs)
    if result.returncode != 0:
        raise HarnessError(
            f"{suite}: {what} failed (exit {result.returncode}); full log: {log}\n{tail(log)}"
        )


def _chroot(rootfs: Path, script: str, log: Path, suite: str, what: str):
    """Run a shell script in ROOTFS during the build."""
    cmd, env = namespace_chroot(rootfs, ["/bin/sh", "-eu", "-c", script])
    _run_logged(cmd, log, what, suite, env=env)


def _build(suite: str, key: str) -> None:
    require_tools("mmdebstrap", "mke2fs", "qemu-img", "ssh-keygen", "chroot")
    image, new, ready = _paths(suite)
    started = time.monotonic()
    progress(suite, f"building the guest image in {image} (version {key})")
    if ready.exists():
        ready.unlink()
    remove_tree(new)
    new.mkdir(parents=True)
    log = new / "build.log"
    rootfs = new / "rootfs"

    ssh_key = _ensure_ssh_key(suite, log)

    sources = debian.apt_source_lines(suite)
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
           "--include=" + ",".join(debian.PACKAGES), "--skip=cleanup/apt/lists"]
    for option in debian.apt_options(suite):
        cmd.append("--aptopt=" + option)
    preferences = debian.apt_preferences(suite)
    if preferences:
        # before apt's first resolution, so the kernel comes from where the pin says
        cmd.append("--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && printf '%s' '"
                   + preferences + "' > \"$1/etc/apt/preferences.d/frelink\"")
    cmd += [debian.codename(suite), rootfs] + sources
    # one download at a time: parallel prepare() calls for several suites share the host
    with file_lock(cache_root() / "mmdebstrap.lock", suite,
                   "waiting for another suite's mmdebstrap to finish"):
        progress(suite, "downloading and installing Debian packages with mmdebstrap "
                        f"(~{len(debian.PACKAGES)} packages plus dependencies, kernel, headers, "
                        "gcc; 2-6 min; log: " + str(log) + ")")
        _run_logged(cmd, log, "mmdebstrap", suite)

    progress(suite, "configuring the image (ssh key, network, user tester, masked timers)")
    pubkey = Path(f"{ssh_key}.pub").read_text().strip()
    _customize(suite, rootfs, pubkey, log)

    release = installed_kernel(rootfs, suite, log)
    shutil.copy2(rootfs / "boot" / f"vmlinuz-{release}", new / "vmlinuz")
    shutil.copy2(rootfs / "boot" / f"initrd.img-{release}", new / "initrd.img")

    progress(suite, f"writing the {DISK_SIZE} ext4 disk image from the rootfs (~30 s)")
    raw = new / "disk.raw"
    _run_logged(["truncate", "-s", DISK_SIZE, raw], log, "truncate", suite)
    _run_logged(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "frelink-root", "-d", rootfs, raw],
                log, "mke2fs -d", suite)
    _run_logged(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, new / "disk.qcow2"],
                log, "qemu-img convert", suite)
    raw.unlink()

    meta = {"suite": suite, "kernel_release": release, "key": key, "sources": sources,
            "ssh_pubkey": pubkey,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (new / "env.json").write_text(json.dumps(meta, indent=2) + "\n")
    remove_tree(image)
    os.rename(new, image)
    write_atomic(ready, key + "\n")
    progress(suite, f"image ready: kernel {release}, built in {time.monotonic() - started:.0f} s")


def installed_kernel(rootfs: Path, suite: str, log: Path) -> str:
    """The release of the one kernel in ROOTFS, checked to have its initrd and headers there."""
    boot = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(boot) != 1:
        raise HarnessError(f"{suite}: expected one kernel in {rootfs / 'boot'}, found {boot}")
    release = boot[0].name[len("vmlinuz-"):]
    if not guest_fs.is_file(rootfs, f"/boot/initrd.img-{release}"):
        raise HarnessError(f"{suite}: /boot/initrd.img-{release} is missing in the image "
                           f"(initramfs-tools failed?); log: {log}")
    if not guest_fs.is_file(rootfs, headers_makefile(release)):
        raise HarnessError(f"{suite}: headers for {release} are missing in the image "
                           f"({headers_makefile(release)} does not resolve inside it); log: {log}")
    return release


def _customize(suite: str, rootfs: Path, pubkey: str, log: Path) -> None:
    hostname = HOSTNAME.format(suite=suite)
    etc = rootfs / "etc"
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n")
    (etc / "fstab").write_text("/dev/vda\t/\text4\trw,errors=remount-ro\t0\t0\n")
    # QEMU user networking answers DNS on 10.0.2.3; no resolver daemon needed.
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("nameserver 10.0.2.3\n")
    (etc / "systemd" / "network").mkdir(parents=True, exist_ok=True)
    (etc / "systemd" / "network" / "20-wired.network").write_text(NETWORK_UNIT)
    (etc / "ssh" / "sshd_config.d").mkdir(parents=True, exist_ok=True)
    (etc / "ssh" / "sshd_config.d" / "frelink.conf").write_text(SSHD_CONFIG)
    options = debian.apt_options(suite)
    if options:
        (etc / "apt" / "apt.conf.d" / "99frelink").write_text("\n".join(options) + "\n")
    (etc / "sudoers.d" / "tester").write_text("tester ALL=(ALL) NOPASSWD:ALL\n")
    os.chmod(etc / "sudoers.d" / "tester", 0o440)
    (rootfs / "build").mkdir(exist_ok=True)  # bind mount point for module builds
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    (etc / "modprobe.d" / "frelink-blacklist.conf").write_text(
        "".join(f"blacklist {name}\n" for name in BLACKLISTED_MODULES))
    # every ssh command is a new session: skip the motd scripts (slow under TCG)
    pam_sshd = etc / "pam.d" / "sshd"
    pam_sshd.write_text("".join(
        "#" + line if "pam_motd.so" in line and not line.startswith("#") else line
        for line in pam_sshd.read_text().splitlines(keepends=True)))
    (etc / "initramfs-tools" / "conf.d" / "frelink").write_text("MODULES=list\n")
    (etc / "initramfs-tools" / "modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")

    script = f"""
        update-initramfs -u -k all
        systemctl enable systemd-networkd.service ssh.service
        systemctl mask {' '.join(MASKED_UNITS)}
        useradd --create-home --shell /bin/bash --groups sudo tester
        for home in /root /home/tester; do
            mkdir -p "$home/.ssh"
            printf '%s\\n' '{pubkey}' > "$home/.ssh/authorized_keys"
            chmod 700 "$home/.ssh"
            chmod 600 "$home/.ssh/authorized_keys"
        done
        chown -R tester:tester /home/tester/.ssh
    """
    _chroot(rootfs, script, log, suite, "image customisation")
