"""Boot a suite's image in QEMU (TCG) on a copy-on-write overlay and talk to it over SSH.

The first default-configured boot of a suite also saves the booted machine (QMP
migrate to a file, with the overlay it booted on frozen as its disk); later guests
restore that state on a fresh overlay of the frozen disk in a few seconds instead of
booting. The saved state is keyed by the image version and the QEMU configuration, and
a restore that does not answer on SSH quickly falls back to a cold boot.
"""

import atexit
import ctypes
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .chroot import CommandError
from .debs import fetch_debs
from .image import prepare
from .util import (HarnessError, file_lock, progress, remove_tree, require_tools, suite_dir, tail,
                   write_atomic)

DEFAULT_MEM_MB = 2048
SMP = 2
BOOT_TIMEOUT = int(os.environ.get("FRELINK_BOOT_TIMEOUT", "600"))
RESTORE_TIMEOUT = 120
SSH_HOST = "127.0.0.1"

_running = set()


class GuestCommandError(CommandError):
    """A command in the guest failed (or ssh itself failed: exit 255)."""


def _die_with_parent():
    # a guest owned by a test process must not outlive it, even when it is SIGKILLed
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((SSH_HOST, 0))
        return probe.getsockname()[1]


def _qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


class QMP:
    """Just enough of the QEMU Machine Protocol for stop/migrate/quit."""

    def __init__(self, path: Path, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("r")
        json.loads(self.reader.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments):
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            line = self.reader.readline()
            if not line:
                if command == "quit":
                    return {}
                raise HarnessError(f"QMP connection closed during {command}")
            reply = json.loads(line)
            if "error" in reply:
                raise HarnessError(f"QMP {command} failed: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def close(self):
        self.reader.close()
        self.sock.close()


class Guest:
    """A booted Debian guest of SUITE; use as a context manager (stops on exit)."""

    def __init__(self, suite, mem_mb=DEFAULT_MEM_MB, kernel_cmdline_extra="", instance_dir=None,
                 detached=False, snapshot=None, boot_timeout=BOOT_TIMEOUT, kernel=None):
        require_tools("qemu-system-x86_64", "qemu-img", "ssh", "scp")
        self.suite = suite
        self.env = prepare(suite)
        self.mem_mb = int(mem_mb)
        self.kernel_cmdline_extra = kernel_cmdline_extra.strip()
        self.cmdline = " ".join(filter(None, [self.env.cmdline, self.kernel_cmdline_extra]))
        self.boot_timeout = boot_timeout
        self.detached = detached
        # snapshot: None saves and restores a booted state for the default configuration
        # only; a name (e.g. "debug") does it for this configuration under that name
        default_config = self.mem_mb == DEFAULT_MEM_MB and not self.kernel_cmdline_extra and kernel is None
        self.snapshot_name = "snapshot" if snapshot is None else (
            f"snapshot-{snapshot}" if isinstance(snapshot, str) else "snapshot")
        enabled = os.environ.get("FRELINK_SNAPSHOT", "1") != "0"
        self.use_snapshot = enabled and (isinstance(snapshot, str) or (snapshot in (None, True) and default_config))
        self._own_dir = instance_dir is None
        self.dir = Path(instance_dir or tempfile.mkdtemp(prefix=f"frelink-{suite}-")).resolve()
        self.ssh_key = self.env.ssh_key
        self.ssh_port = None
        self.process = None
        self.pid = None
        self._control_dir = None
        self.restored = False
        # what QEMU boots (-kernel, and -initrd unless None): the image's kernel, or
        # kernel=(bzImage, None) for one that needs no initramfs (the debug kernel)
        self.vmlinuz, self.initrd = kernel or (self.env.vmlinuz, self.env.initrd)

    # ---- lifecycle -------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"

    @property
    def _qmp_path(self) -> Path:
        return self.dir / "qmp.sock"

    def start(self):
        """Boot (or restore) the guest and wait until SSH answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if self.use_snapshot:
            snap = _ensure_snapshot(self)
            if snap is not None:
                try:
                    self._launch(snap / "disk.qcow2", incoming=f"exec:cat {shlex.quote(str(snap / 'state'))}")
                    self._resume_incoming(RESTORE_TIMEOUT)
                    self._wait_ssh(RESTORE_TIMEOUT)
                    self._sync_clock()
                    self.restored = True
                except HarnessError as error:
                    progress(self.suite, f"restoring the saved state failed, booting cold: {error}")
                    _invalidate_snapshot(self)
                    self._kill()
        if not self.restored:
            self._launch(self.env.disk)
            self._wait_ssh(self.boot_timeout)
        if not self.detached:
            self._start_master()
        how = "restored" if self.restored else "booted"
        progress(self.suite, f"guest {how}, ssh on port {self.ssh_port} after "
                             f"{time.monotonic() - started:.1f} s")
        return self

    def _launch(self, backing: Path, incoming=None, keep_overlay=False, port=None):
        self.dir.mkdir(parents=True, exist_ok=True)
        overlay = self.dir / "overlay.qcow2"
        if not keep_overlay:
            if overlay.exists():
                overlay.unlink()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                            "-b", str(backing), str(overlay)], check=True)
        for attempt in range(5):
            self.ssh_port = port if port and attempt == 0 else _free_port()
            argv = _qemu_argv(self.env, self.mem_mb, self.cmdline, overlay, self.ssh_port,
                              self.console_path, self._qmp_path, self.dir / "qemu.pid", incoming,
                              kernel=(self.vmlinuz, self.initrd))
            for stale in (self.console_path, self._qmp_path):
                if stale.exists():
                    stale.unlink()
            with open(self.dir / "qemu.log", "w") as log:
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=None if self.detached else _die_with_parent)
            self.pid = self.process.pid
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._qmp_path.exists():
                    break
                time.sleep(0.05)
            if self.process.poll() is None:
                if not self.detached:
                    _running.add(self)
                return
            output = (self.dir / "qemu.log").read_text(errors="replace")
            if "host forwarding" not in output:
                break
        raise HarnessError(f"{self.suite}: QEMU did not start (exit {self.process.returncode}):\n"
                           f"{tail(self.dir / 'qemu.log')}")

    def _resume_incoming(self, timeout):
        """Start the CPUs once the saved state is loaded (it was saved stopped)."""
        deadline = time.monotonic() + timeout
        qmp = QMP(self._qmp_path, timeout=timeout)
        try:
            while time.monotonic() < deadline:
                status = qmp.execute("query-status")["status"]
                if status == "running":
                    return
                if status in ("paused", "postmigrate", "prelaunch"):
                    if qmp.execute("query-migrate").get("status") == "completed":
                        qmp.execute("cont")
                        return
                elif status != "inmigrate":
                    raise HarnessError(f"restored guest is in state {status!r}")
                time.sleep(0.1)
        finally:
            qmp.close()
        raise HarnessError(f"saved state not loaded after {timeout} s")

    def _ssh_base(self, user="root", control=True):
        options = ["-i", str(self.ssh_key), "-p", str(self.ssh_port),
                   "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                   "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                   "-o", "ConnectTimeout=10", "-o", "IdentitiesOnly=yes",
                   "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=6"]
        if control and self._control_dir:
            options += ["-o", f"ControlPath={self._control_dir}/%r", "-o", "ControlMaster=no"]
        else:
            options += ["-o", "ControlPath=none"]
        return options

    def _probe(self, command="true", timeout=30):
        argv = ["ssh", *self._ssh_base(control=False), f"root@{SSH_HOST}", command]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return None

    def _wait_ssh(self, timeout, differs_from=None):
        """Wait until root can log in (and, after a reboot, the boot id changed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise HarnessError(
                    f"{self.suite}: QEMU exited ({self.process.returncode}) before SSH came up; "
                    f"console log {self.console_path}:\n{tail(self.console_path)}\n"
                    f"qemu: {tail(self.dir / 'qemu.log', 10)}")
            result = self._probe("cat /proc/sys/kernel/random/boot_id")
            if result is not None and result.returncode == 0:
                boot_id = result.stdout.strip()
                if differs_from is None or boot_id != differs_from:
                    return boot_id
            time.sleep(1)
        raise HarnessError(
            f"{self.suite}: no SSH on 127.0.0.1:{self.ssh_port} after {timeout} s; "
            f"console log {self.console_path} ends with:\n{tail(self.console_path)}")

    def _sync_clock(self):
        # A restored guest's clock stands at the moment the state was saved.
        result = self._probe(f"date -u -s @{time.time():.3f} >/dev/null")
        if result is None or result.returncode != 0:
            raise HarnessError("could not set the restored guest's clock")

    def _start_master(self):
        self._control_dir = tempfile.mkdtemp(prefix="frl-ssh-", dir="/tmp")
        for user in ("root", "tester"):
            subprocess.run(["ssh", *self._ssh_base(user, control=False), "-o",
                            f"ControlPath={self._control_dir}/%r", "-o", "ControlMaster=yes",
                            "-o", "ControlPersist=yes", "-f", "-N", f"{user}@{SSH_HOST}"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)

    def _stop_master(self):
        if not self._control_dir:
            return
        for user in ("root", "tester"):
            if os.path.exists(os.path.join(self._control_dir, user)):
                subprocess.run(["ssh", "-o", f"ControlPath={self._control_dir}/%r", "-O", "exit",
                                f"{user}@{SSH_HOST}"], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=30, check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    def _kill(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                qmp = QMP(self._qmp_path, timeout=5)
                qmp.execute("quit")
                qmp.close()
            except (OSError, HarnessError, ValueError):
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        _running.discard(self)
        self.process = None

    def stop(self):
        """Power the guest off and remove its overlay (and its directory if temporary)."""
        self._stop_master()
        self._kill()
        for name in ("overlay.qcow2", "qmp.sock"):
            path = self.dir / name
            if path.exists():
                path.unlink()
        if self._own_dir and os.environ.get("FRELINK_KEEP_GUEST") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- use -------------------------------------------------------------

    def run(self, cmd, timeout=600, check=True, input=None, user="root"):
        """Run shell command CMD in the guest as USER; text CompletedProcess."""
        argv = ["ssh", *self._ssh_base(user), f"{user}@{SSH_HOST}", cmd]
        try:
            result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                    timeout=timeout,
                                    stdin=None if input is not None else subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as error:
            raise HarnessError(f"{self.suite}: guest command timed out after {timeout} s: {cmd}\n"
                               f"stdout: {error.stdout!r}\nstderr: {error.stderr!r}") from None
        result.args = cmd
        if check and result.returncode != 0:
            raise GuestCommandError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def _scp(self, sources, target):
        argv = ["scp", "-q", "-r", *self._ssh_base("root")]
        argv[argv.index("-p")] = "-P"
        result = subprocess.run(argv + [str(s) for s in sources] + [str(target)],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            raise GuestCommandError(result.returncode, "scp", result.stdout, result.stderr)

    def put(self, local, remote):
        """Copy a local file or directory to REMOTE in the guest (as root)."""
        self._scp([local], f"root@{SSH_HOST}:{remote}")

    def install_debs(self, packages, timeout=900):
        """Install Debian PACKAGES (fetched once with the image's apt, see harness/debs.py) offline."""
        status = self.run("cat /var/lib/dpkg/status").stdout.encode()
        debs = fetch_debs(self.env.suite, packages, status)
        remote = "/root/frelink-debs"
        self.run("rm -rf %s" % remote)
        self.put(debs, remote)
        self.run("DEBIAN_FRONTEND=noninteractive dpkg -i --force-confdef --force-confold %s/*.deb >/dev/null "
                 "&& rm -rf %s" % (remote, remote), timeout=timeout)

    def get(self, remote, local):
        """Copy REMOTE from the guest to a local path."""
        self._scp([f"root@{SSH_HOST}:{remote}"], local)

    def reboot(self, timeout=BOOT_TIMEOUT):
        """Reboot for real (QEMU restarts the same kernel) and wait for SSH on the same port."""
        boot_id = self.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        self._stop_master()
        self._probe("systemctl reboot", timeout=30)
        self._wait_ssh(timeout, differs_from=boot_id)
        if not self.detached:
            self._start_master()

    def boot_installed_kernel(self, release, timeout=BOOT_TIMEOUT):
        """Power off and boot the kernel RELEASE installed in the guest, on the same disk.

        QEMU boots with -kernel/-initrd, not through a boot loader, so a kernel installed
        in the guest (a backports upgrade, say) is never started by reboot(). This copies
        /boot/vmlinuz-RELEASE and /boot/initrd.img-RELEASE out of the guest into the
        instance dir, shuts the guest down cleanly (systemctl poweroff), and starts QEMU
        again on the same overlay with them and the same kernel command line; the SSH
        port is kept when it is still free. Waits for SSH like a cold boot; returns the
        new `uname -r`. Later reboot() calls keep booting RELEASE. Not for detached guests.
        """
        if self.detached:
            raise HarnessError("boot_installed_kernel() needs a guest owned by this process")
        boot = self.dir / "boot"
        boot.mkdir(exist_ok=True)
        vmlinuz, initrd = boot / f"vmlinuz-{release}", boot / f"initrd.img-{release}"
        self.get(f"/boot/vmlinuz-{release}", vmlinuz)
        self.get(f"/boot/initrd.img-{release}", initrd)
        self.run("sync")
        port = self.ssh_port
        self._stop_master()
        self._probe("systemctl poweroff", timeout=30)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            progress(self.suite, f"guest did not power off within {timeout} s; killing QEMU")
            self._kill()
        _running.discard(self)
        self.process = None
        self.vmlinuz, self.initrd = vmlinuz, initrd
        self._launch(self.dir / "overlay.qcow2", keep_overlay=True, port=port)
        self._wait_ssh(timeout)
        self._start_master()
        return self.run("uname -r").stdout.strip()

    def inventory_path(self) -> Path:
        """An Ansible INI inventory with the single host `guest`."""
        args = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                "-o ConnectTimeout=30 -o IdentitiesOnly=yes")
        path = self.dir / "inventory.ini"
        path.write_text(
            "[guests]\n"
            f"guest ansible_host={SSH_HOST} ansible_port={self.ssh_port} ansible_user=root "
            f"ansible_ssh_private_key_file={self.ssh_key} "
            "ansible_python_interpreter=/usr/bin/python3 "
            f"ansible_ssh_common_args='{args}'\n")
        return path

    def console_log(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def info(self) -> dict:
        return {"suite": self.suite, "host": SSH_HOST, "port": self.ssh_port, "user": "root",
                "key": str(self.ssh_key), "pid": self.pid, "kernel_release": self.env.kernel_release,
                "instance_dir": str(self.dir), "console_log": str(self.console_path),
                "inventory": str(self.inventory_path()), "restored": self.restored}


def _qemu_argv(env, mem_mb, cmdline, overlay, port, console, qmp, pidfile, incoming=None, kernel=None):
    vmlinuz, initrd = kernel or (env.vmlinuz, env.initrd)
    argv = [
        "qemu-system-x86_64", "-name", f"frelink-{env.suite}",
        "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", str(SMP), "-m", str(mem_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-serial", f"file:{console}",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-pidfile", str(pidfile),
        "-kernel", str(vmlinuz), *(["-initrd", str(initrd)] if initrd else []), "-append", cmdline,
        "-blockdev", f"driver=qcow2,node-name=root,file.driver=file,file.filename={overlay}",
        "-device", "virtio-blk-pci,drive=root",
        "-netdev", f"user,id=net0,hostfwd=tcp:{SSH_HOST}:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]
    if incoming:
        argv += ["-incoming", incoming]
    return argv


# ---- saved booted state ---------------------------------------------------

def _snapshot_dir(guest) -> Path:
    return suite_dir(guest.suite) / guest.snapshot_name


def _snapshot_key(guest) -> str:
    kernel = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in (guest.vmlinuz, guest.initrd)
              if path] if (guest.vmlinuz, guest.initrd) != (guest.env.vmlinuz, guest.env.initrd) else []
    # the base disk's identity: an image rebuilt with the same key (a newer kernel in the archive, a
    # rebuild by hand) is another disk under the saved state's copy-on-write overlay
    disk = Path(guest.env.disk).stat()
    recipe = [guest.env.key, guest.cmdline, guest.mem_mb, SMP, _qemu_version(), 1,
              [disk.st_ino, disk.st_size, disk.st_mtime_ns]] + kernel
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]


def _invalidate_snapshot(guest):
    ready = _snapshot_dir(guest).with_name(guest.snapshot_name + ".ready")
    if ready.exists():
        ready.unlink()


def _ensure_snapshot(guest):
    """The directory of a saved booted state for GUEST's configuration, made if missing.

    Returns None (cold boot) when it cannot be made.
    """
    env, mem_mb = guest.env, guest.mem_mb
    snap = _snapshot_dir(guest)
    ready = snap.with_name(guest.snapshot_name + ".ready")
    key = _snapshot_key(guest)

    def valid():
        try:
            return (ready.read_text().strip() == key and (snap / "state").exists()
                    and (snap / "disk.qcow2").exists())
        except OSError:
            return False

    if valid():
        return snap
    with file_lock(suite_dir(env.suite) / f"{guest.snapshot_name}.lock", env.suite,
                   "waiting for another process that is saving a booted state"):
        if valid():
            return snap
        if ready.exists():
            ready.unlink()
        remove_tree(snap)
        progress(env.suite, "first boot of this image: booting cold, then saving the booted "
                            "state for fast restores (one time, ~1 min)")
        maker = Guest(env.suite, mem_mb=mem_mb, kernel_cmdline_extra=guest.kernel_cmdline_extra, instance_dir=snap,
                      snapshot=False, boot_timeout=guest.boot_timeout, kernel=(guest.vmlinuz, guest.initrd))
        try:
            maker._launch(env.disk)
            maker._wait_ssh(maker.boot_timeout)
            # let boot finish so restored guests are quiet, and close every ssh session
            maker._probe("systemctl is-system-running --wait >/dev/null; sync", timeout=maker.boot_timeout)
            time.sleep(1)
            qmp = QMP(maker._qmp_path)
            qmp.execute("stop")
            state = snap / "state.tmp"
            qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(state))}")
            deadline = time.monotonic() + 300
            while True:
                status = qmp.execute("query-migrate").get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise HarnessError(f"saving the booted state failed: migration {status}")
                time.sleep(0.2)
            qmp.execute("quit")
            qmp.close()
            maker.process.wait(30)
            maker.process = None
            _running.discard(maker)
            os.rename(state, snap / "state")
            os.rename(snap / "overlay.qcow2", snap / "disk.qcow2")
        except (HarnessError, OSError, subprocess.SubprocessError) as error:
            progress(env.suite, f"could not save a booted state ({error}); booting cold")
            maker._kill()
            return None
        write_atomic(ready, key + "\n")
        progress(env.suite, f"saved the booted state in {snap}")
        return snap


@atexit.register
def _stop_leftovers():
    for guest in list(_running):
        try:
            guest.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
