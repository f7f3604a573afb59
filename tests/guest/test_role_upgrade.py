"""The frelink_kmod role across a kernel upgrade and a module upgrade, on a bookworm VM.

Kernel upgrade: bookworm's 6.1 to the bookworm-backports kernel (whatever release
that is now: read from what got installed), through apt in the guest, then a boot
of the new kernel (Guest.boot_installed_kernel: QEMU boots -kernel, not the
guest's boot loader).

- persistent: true. The role writes AUTOINSTALL="yes" (and a second run changes
  nothing). A kernel package installed without its headers (bookworm's
  linux-image-cloud-amd64) installs fine (exit 0: DKMS's kernel hook skips a
  kernel without headers) and nothing is built for it. Installing the backports
  linux-image-amd64 and linux-headers-amd64 builds frelink for NEW during that
  apt run (the .ko in /lib/modules/NEW/updates/dkms/, vermagic NEW). After
  booting NEW the module is loaded at boot (same srcversion as the installed
  .ko) and a frelink_restore through Ansible relinks a deleted file still held
  open.
- persistent: false. AUTOINSTALL is empty: the kernel + headers install builds
  nothing for NEW, nothing is loaded after booting it; a role run builds and
  loads it for NEW, and a restore works.
- module upgrade (same guest, on NEW): sources changed (a copy of kmod/ with one
  extra MODULE_INFO line, so another srcversion) while a process holds
  /dev/frelink open: the role rebuilds, warns (a real Ansible [WARNING]) and
  leaves the old module loaded; once the holder is gone the next run replaces
  it without rebuilding, and the run after that changes nothing.

The downloaded backports lists and .deb files are cached under
<cache root>/bookworm/debs-backports/ (rebuilt when missing), so the second
scenario and later runs download nothing.
"""
import contextlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from role_run import one_line, recap, run_playbook, run_role

import harness
from harness.util import cache_root

pytestmark = [pytest.mark.guest, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BACKPORTS = "bookworm-backports"
CACHE = cache_root() / SUITE / "debs-backports"
APT = ("DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0 "
       "--no-install-recommends install -t %s " % BACKPORTS)
TIMINGS = []

HOLDER = r"""
import json, os, signal, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
os.write(fd, b"precious " * 4096)
os.fsync(fd)
st = os.fstat(fd)
os.unlink(path)
with open("/run/holder.json.tmp", "w") as f:
    json.dump({"pid": os.getpid(), "fd": fd, "ino": st.st_ino}, f)
os.rename("/run/holder.json.tmp", "/run/holder.json")
while True:
    signal.pause()
"""

RESTORE = """\
- name: Restore a deleted file through the frelink module
  hosts: all
  gather_facts: false
  tasks:
    - name: Relink it
      frelink.frelink.frelink_restore:
        path: /root/precious.dat
        method: link
"""


@contextlib.contextmanager
def timed(what):
    started = time.monotonic()
    yield
    TIMINGS.append((what, time.monotonic() - started))
    print("timing: %-60s %6.0f s" % (what, TIMINGS[-1][1]))


@pytest.fixture(scope="module", autouse=True)
def print_timings():
    yield
    print("\ntest_role_upgrade timings:")
    for what, seconds in TIMINGS:
        print("  %-60s %6.0f s" % (what, seconds))
    print("  %-60s %6.0f s" % ("total", sum(entry[1] for entry in TIMINGS)))


def add_backports(guest):
    """The backports source on the guest's own mirror; its lists and .debs from the cache if there."""
    lines = guest.run("grep -E '^deb https?://' /etc/apt/sources.list").stdout.split("\n")
    mirror = next(line.split()[1] for line in lines if line.split()[2:3] == [SUITE])
    guest.run("echo 'deb %s %s main' > /etc/apt/sources.list.d/backports.list" % (mirror, BACKPORTS))
    if (CACHE / "ready").exists():
        with timed("backports lists and .debs from the cache into the guest"):
            guest.put(CACHE / "apt.tar", "/root/apt.tar")
            guest.run("tar -xf /root/apt.tar -C / && rm /root/apt.tar")
        return False
    with timed("apt-get update with %s (cache empty)" % BACKPORTS):
        guest.run("apt-get -q update >/dev/null", timeout=1200)
    return True


def save_backports_cache(guest):
    """Keep the backports lists and every .deb apt downloaded for the next scenario and runs."""
    with timed("backports lists and .debs into the cache"):
        guest.run("cd / && tar -cf /root/apt.tar var/lib/apt/lists/*%s* var/cache/apt/archives/*.deb"
                  % BACKPORTS)
        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.mkdir(parents=True)
        guest.get("/root/apt.tar", CACHE / "apt.tar")
        guest.run("rm /root/apt.tar")
        (CACHE / "ready").write_text("%d bytes\n" % (CACHE / "apt.tar").stat().st_size)


def apt_install(guest, what, packages, target=BACKPORTS):
    """apt-get install PACKAGES (from TARGET) in the guest, timed; the result, new packages printed."""
    command = APT.replace("-t %s " % BACKPORTS, "-t %s " % target if target else "")
    with timed("apt install %s" % what):
        result = guest.run(command + packages, check=False, timeout=1800)
    new = re.search(r"NEW packages will be installed:\n((?:  .*\n)+)", result.stdout)
    print("apt installed:", " ".join(new.group(1).split()) if new else "(nothing new)")
    return result


def installed_release(guest, package):
    """The kernel release PACKAGE (linux-image-amd64 from backports) depends on."""
    depends = guest.run("dpkg-query -W -f '${Depends}' %s" % package).stdout
    match = re.search(r"linux-image-(\S+?)(?:-unsigned)?(?:\s|,|$)", depends)
    assert match, depends
    return match.group(1)


def module_files(guest, release):
    return guest.run("ls /lib/modules/%s/updates/dkms/ 2>/dev/null | grep '^frelink\\.ko' ; true"
                     % release).stdout.split()


def srcversions(guest):
    """(loaded srcversion or '', srcversion of the installed .ko for the running kernel or '')."""
    out = guest.run("cat /sys/module/frelink/srcversion 2>/dev/null; echo /; "
                    "modinfo -F srcversion frelink 2>/dev/null; true").stdout
    loaded, installed = out.split("/", 1)
    return loaded.strip(), installed.strip()


def check_restore(guest, tmp_path):
    guest.run("cat > /root/holder.py", input=HOLDER)
    guest.run("rm -f /run/holder.json; setsid python3 /root/holder.py /root/precious.dat "
              "</dev/null >/dev/null 2>&1 & for i in $(seq 100); do [ -e /run/holder.json ] && break; "
              "sleep 0.1; done; test -e /run/holder.json")
    held = json.loads(guest.run("cat /run/holder.json").stdout)
    assert guest.run("test -e /root/precious.dat", check=False).returncode != 0
    with timed("frelink_restore through Ansible on %s" % guest.run("uname -r").stdout.strip()):
        proc, out = run_playbook(guest, tmp_path, RESTORE, name="restore.yml")
    assert proc.returncode == 0, out
    # the same inode (a relink, not a copy), now with one name; the holder's fd is that
    # inode too (its readlink keeps saying "(deleted)": it names the old dentry)
    assert guest.run("stat -c %i:%h /root/precious.dat").stdout.strip() == "%d:1" % held["ino"]
    assert int(guest.run("stat -L -c %%i /proc/%d/fd/%d" % (held["pid"], held["fd"])).stdout) == held["ino"]
    assert guest.run("head -c 9 /root/precious.dat").stdout == "precious "
    guest.run("kill %d; rm -f /root/precious.dat" % held["pid"])


def boot_new_kernel(guest, release):
    with timed("power off, cold boot of %s" % release):
        assert guest.boot_installed_kernel(release) == release


@pytest.mark.upgrade
def test_persistent_true_kernel_upgrade(tmp_path):
    with timed("guest start (persistent: true)"):
        guest = harness.Guest(SUITE).start()
    try:
        old = guest.run("uname -r").stdout.strip()
        with timed("role, persistent: true, build for %s" % old):
            proc, out = run_role(guest, tmp_path, frelink_kmod_persistent=True)
        assert proc.returncode == 0, out
        with timed("role again (idempotence)"):
            proc, out = run_role(guest, tmp_path, frelink_kmod_persistent=True)
        assert proc.returncode == 0 and recap(out)["changed"] == 0, out
        conf = guest.run("grep '^AUTOINSTALL=' /usr/src/frelink-*/dkms.conf").stdout.strip()
        assert conf == 'AUTOINSTALL="yes"', conf

        # A kernel package without its headers: bookworm's cloud kernel.
        fill_cache = add_backports(guest)
        result = apt_install(guest, "linux-image-cloud-amd64 without headers", "linux-image-cloud-amd64",
                             target=None)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        cloud = installed_release(guest, "linux-image-cloud-amd64")
        assert guest.run("test -e /lib/modules/%s/build/include" % cloud, check=False).returncode != 0, \
            "headers for %s got installed:\n%s" % (cloud, result.stdout[-3000:])
        assert module_files(guest, cloud) == [], "built for %s without its headers?" % cloud
        assert "autoinstall for kernel %s was skipped" % cloud in result.stdout + result.stderr, \
            result.stdout[-3000:]

        result = apt_install(guest, "%s linux-image-amd64 linux-headers-amd64" % BACKPORTS,
                             "linux-image-amd64 linux-headers-amd64")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        if fill_cache:
            save_backports_cache(guest)
        new = installed_release(guest, "linux-image-amd64")
        print("kernels: %s -> %s (and %s without headers)" % (old, new, cloud))
        assert new not in (old, cloud)
        assert module_files(guest, new), "DKMS did not build frelink for %s:\n%s" % (new, result.stdout[-3000:])
        built = guest.run("modinfo -k %s -F vermagic frelink" % new).stdout
        assert built.split()[0] == new, built

        boot_new_kernel(guest, new)
        assert guest.run("test -c /dev/frelink && cat /sys/module/frelink/refcnt", check=False).returncode == 0, \
            "frelink not loaded at boot of %s" % new
        loaded, installed = srcversions(guest)
        assert loaded and loaded == installed
        check_restore(guest, tmp_path)
    finally:
        guest.stop()


@pytest.mark.upgrade
def test_persistent_false_kernel_upgrade_and_module_upgrade(tmp_path):
    with timed("guest start (persistent: false)"):
        guest = harness.Guest(SUITE).start()
    try:
        old = guest.run("uname -r").stdout.strip()
        with timed("role, persistent: false, build for %s" % old):
            proc, out = run_role(guest, tmp_path)
        assert proc.returncode == 0, out
        conf = guest.run("grep '^AUTOINSTALL=' /usr/src/frelink-*/dkms.conf").stdout.strip()
        assert conf == 'AUTOINSTALL=""', conf

        fill_cache = add_backports(guest)
        result = apt_install(guest, "%s linux-image-amd64 linux-headers-amd64" % BACKPORTS,
                             "linux-image-amd64 linux-headers-amd64")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        if fill_cache:
            save_backports_cache(guest)
        new = installed_release(guest, "linux-image-amd64")
        print("kernels: %s -> %s" % (old, new))
        assert new != old
        assert guest.run("test -e /lib/modules/%s/build/include" % new, check=False).returncode == 0
        assert module_files(guest, new) == [], "built for %s although not persistent" % new

        boot_new_kernel(guest, new)
        assert guest.run("test -e /sys/module/frelink", check=False).returncode != 0, "loaded at boot"
        assert guest.run("modinfo -k %s frelink" % new, check=False).returncode != 0
        with timed("role on %s (build and load)" % new):
            proc, out = run_role(guest, tmp_path)
        assert proc.returncode == 0, out
        assert module_files(guest, new)
        loaded, installed = srcversions(guest)
        assert loaded and loaded == installed
        check_restore(guest, tmp_path)

        # A newer collection: same version, other sources (other srcversion).
        newer = tmp_path / "kmod-newer"
        shutil.copytree(REPO / "kmod", newer)
        with open(newer / "frelink.c", "a") as source:
            source.write('MODULE_INFO(frelink_test, "a newer collection");\n')
        guest.run("setsid sh -c 'exec sleep 3600 < /dev/frelink' >/dev/null 2>&1 & "
                  "echo $! > /run/frelink-holder.pid; sleep 1")
        assert int(guest.run("cat /sys/module/frelink/refcnt").stdout) >= 1
        with timed("role, newer sources, module in use (rebuild, warn)"):
            proc, out = run_role(guest, tmp_path, frelink_kmod_source_dir=str(newer))
        assert proc.returncode == 0, out
        text = one_line(out)
        assert "[WARNING]: The loaded frelink module (srcversion %s)" % loaded in text, out
        assert "so the old one stays loaded" in text and "fuser -v /dev/frelink" in text, out
        still, now_installed = srcversions(guest)
        assert still == loaded and now_installed and now_installed != loaded
        assert guest.run("modinfo -k %s -F frelink_test frelink" % new).stdout.strip() == "a newer collection"

        guest.run("kill $(cat /run/frelink-holder.pid); sleep 1")
        with timed("role, newer sources, not in use (replace)"):
            proc, out = run_role(guest, tmp_path, frelink_kmod_source_dir=str(newer))
        assert proc.returncode == 0, out
        assert "[WARNING]" not in out, out
        assert re.search(r"TASK \[frelink.frelink.frelink_kmod : Build and install the module with DKMS\]"
                         r"\s*\*+\s*skipping", out), "rebuilt although the sources did not change:\n" + out
        replaced, installed = srcversions(guest)
        assert replaced == installed == now_installed, (replaced, installed, now_installed)
        assert guest.run("test -c /dev/frelink", check=False).returncode == 0
        with timed("role, newer sources, again (idempotence)"):
            proc, out = run_role(guest, tmp_path, frelink_kmod_source_dir=str(newer))
        assert proc.returncode == 0 and recap(out)["changed"] == 0, out
    finally:
        guest.stop()


def test_helpers_parse_what_they_read():
    """recap() and the release parsing, on fixed text (no guest)."""
    assert recap("PLAY RECAP ***\nguest : ok=7 changed=0 unreachable=0 failed=0 skipped=9\n")["changed"] == 0

    class Fake:
        def run(self, cmd):
            class R:
                stdout = "linux-image-6.99.1+bpo-amd64 (= 6.99.1-1~bpo12+1)"
            return R()

    assert installed_release(Fake(), "linux-image-amd64") == "6.99.1+bpo-amd64"
