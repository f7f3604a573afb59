"""playbooks/audit.yml against this host with real held deleted files.

Two inventory names point at this host (so the per-host and per-filesystem
aggregation is exercised) and one at a closed port (a host the audit cannot
reach must be reported, not abort the audit). The audit runs in check mode:
it must still write its report on the controller and change nothing here.
The HTML page is rendered in headless Chromium and the screenshot checked.
"""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CHROMIUM = "/usr/bin/chromium"

HOLDER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"p" * int(sys.argv[2]))
os.unlink(sys.argv[1])
print(fd, flush=True)
sys.stdin.read()
"""


def run(argv, check=True, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=check, **kwargs)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def held_file(tmp_path):
    """A 3 MiB file a process keeps open after it was unlinked."""
    path = tmp_path / "audit-precious.log"
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLDER, str(path), str(3 << 20)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = proc.stdout.readline().strip()
        assert fd.isdigit(), "holder process did not start"
        yield {"path": str(path), "pid": proc.pid, "size": 3 << 20,
               "handle": "/proc/%d/fd/%s" % (proc.pid, fd)}
    finally:
        proc.kill()
        proc.wait()


LOG_WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"l" * int(sys.argv[2]))
os.unlink(sys.argv[1])
print(fd, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held_log(tmp_path):
    """A 2 MiB log a process keeps appending to (O_APPEND) after it was unlinked: what a reclaim frees."""
    path = tmp_path / "audit-service.log"
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", LOG_WRITER, str(path), str(2 << 20)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = proc.stdout.readline().strip()
        assert fd.isdigit(), "holder process did not start"
        handle = "/proc/%d/fd/%s" % (proc.pid, fd)
        yield {"path": str(path), "pid": proc.pid, "handle": handle, "allocated": os.stat(handle).st_blocks * 512}
    finally:
        proc.kill()
        proc.wait()


SEMAPHORE = r"""
import multiprocessing, os, sys
lock = multiprocessing.Lock()  # sem_open() then sem_unlink() at once: a mapped, deleted /dev/shm/sem.*
maps = open("/proc/self/maps").read()
print(next(line.split(None, 5)[5].replace(" (deleted)", "").strip() for line in maps.splitlines()
           if "/dev/shm/sem." in line), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held_semaphore():
    """A POSIX semaphore made by Python's multiprocessing, as ansible-playbook itself holds them."""
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", SEMAPHORE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/shm/sem."), "no semaphore: %r" % path
        yield {"path": path, "pid": proc.pid}
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def loop_mounted_image():
    """An ext4 image, loop-mounted, whose backing file was then deleted."""
    if os.geteuid() != 0:
        pytest.fail("test_audit needs root to set up a loop device (run the tests as root)")
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if not shutil.which(tool):
            pytest.fail("test_audit needs %s (util-linux, e2fsprogs)" % tool)
    # /var/tmp: a disk filesystem on most hosts, unlike a tmpfs /tmp.
    work = Path(tempfile.mkdtemp(prefix="frelink-audit-", dir="/var/tmp"))
    image, mnt = work / "disk.img", work / "mnt"
    mnt.mkdir()
    loop = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(24 << 20)
        run(["mkfs.ext4", "-q", "-F", str(image)])
        try:
            loop = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
        except subprocess.CalledProcessError as exc:
            pytest.fail("no loop device available (%s); load the loop driver" % exc.stderr.strip())
        run(["mount", loop, str(mnt)])
        mounted = True
        image.unlink()
        yield {"path": str(image), "loop": loop, "mount": str(mnt), "size": 24 << 20}
    finally:
        if mounted:
            run(["umount", str(mnt)], check=False)
        if loop:
            run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def replaced_library(tmp_path):
    """A shared library a process maps, replaced by a rename (as a deploy or an upgrade does)."""
    library = "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    path = lib_dir / "libaudited.so.1"
    shutil.copy(library, path)
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('ok', flush=True); "
                             "sys.stdin.read()", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok", "the library did not load"
        shutil.copy(library, str(path) + ".new")
        os.rename(str(path) + ".new", path)
        yield {"path": str(path), "pid": proc.pid}
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def held_odd_name(tmp_path):
    """A held deleted file whose name is not UTF-8."""
    directory = tmp_path / "odd"
    directory.mkdir()
    path = os.path.join(os.fsencode(directory), b"\xff\xfe-audit.log")
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLDER, os.fsdecode(path), "8192"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip().isdigit(), "holder process did not start"
        yield {"shown": str(directory) + "/\\xff\\xfe-audit.log"}
    finally:
        proc.kill()
        proc.wait()


def test_audit_reports_real_orphans(held_file, held_semaphore, loop_mounted_image, replaced_library, held_odd_name,
                                    held_log, tmp_path):
    report = tmp_path / "report"
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[fleet]\n"
        "web1 ansible_connection=local ansible_python_interpreter=%s\n"
        "web2 ansible_connection=local ansible_python_interpreter=%s\n"
        "gone ansible_host=127.0.0.1 ansible_port=%d ansible_user=root "
        "ansible_ssh_common_args='-o ConnectTimeout=10 -o BatchMode=yes'\n"
        % (SYSTEM_PYTHON, SYSTEM_PYTHON, closed_port()))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    proc = run([str(BIN / "ansible-playbook"), "-i", str(inventory), "--check",
                str(REPO / "playbooks" / "audit.yml"), "-e", "frelink_audit_dir=%s" % report,
                "-e", "frelink_audit_top_holders=1000"],
               env=env, cwd=tmp_path, check=False)
    print("audit.yml took %.1f s" % (time.monotonic() - started))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Nothing changed on the host: both files are still deleted and held.
    assert os.stat(held_file["handle"]).st_nlink == 0
    assert not os.path.exists(held_file["path"])
    assert not os.path.exists(loop_mounted_image["path"])

    data = json.loads((report / "audit.json").read_text())
    hosts = {h["name"]: h for h in data["hosts"]}
    assert hosts["web1"]["status"] in ("ok", "partial"), hosts["web1"]
    assert hosts["gone"]["status"] == "unreachable", hosts["gone"]
    assert data["totals"]["hosts"] == 3 and data["totals"]["hosts_failed"] == 1

    def entries(path):
        return [o for o in data["orphans"] if o["path"] == path]

    held = entries(held_file["path"])
    assert sorted(o["host"] for o in held) == ["web1", "web2"], data["orphans"]
    assert held[0]["size"] == held_file["size"]
    assert "fd" in held[0]["kinds"]
    assert any("[%d]" % held_file["pid"] in h for h in held[0]["holders"]), held[0]

    image = entries(loop_mounted_image["path"])
    assert len(image) == 2, data["orphans"]
    # Only the loop device holds it: no handle to stat, the size may be unknown.
    assert image[0]["size"] in (None, loop_mounted_image["size"]), image[0]
    assert image[0]["kinds"] == ["loop"]
    assert any(o["path"] == loop_mounted_image["path"] for o in data["loop_swap"])
    assert hosts["web1"]["loop_swap"] >= 1
    assert any(h["holder"].startswith(loop_mounted_image["loop"]) for h in data["top_holders"])

    # Per-filesystem totals add up to the per-host totals, and so does the restart table.
    for name in ("web1", "web2"):
        fs_total = sum(f["allocated"] for f in data["filesystems"] if f["host"] == name)
        assert fs_total == hosts[name]["pinned"] == hosts[name]["allocated"] + hosts[name]["replaced_allocated"] > 0
        restart = [r for r in data["restart"] if r["host"] == name]
        assert sum(r["allocated"] for r in restart) == hosts[name]["pinned"]
        assert sum(r["orphans"] for r in restart) == hosts[name]["orphans"] + hosts[name]["replaced"]
    assert data["totals"]["pinned"] == sum(h["pinned"] for h in data["hosts"])

    # The replaced library needs a restart and is not at risk; its holder's row frees it.
    assert not entries(replaced_library["path"])
    lib = [o for o in data["replaced"] if o["path"] == replaced_library["path"]]
    assert sorted(o["host"] for o in lib) == ["web1", "web2"] and lib[0]["class"] == "replaced", data["replaced"]
    assert lib[0]["restore"].startswith("nothing to restore: restart")
    assert data["totals"]["replaced"] >= 2 and hosts["web1"]["replaced"] >= 1
    web1_lib = next(o for o in lib if o["host"] == "web1")
    (row,) = [r for r in data["restart"] if r["host"] == "web1"
              and [(t["kind"], t["name"]) for t in r["targets"]] == [(t["kind"], t["name"]) for t in web1_lib["restart"]]]
    assert row["by_class"]["replaced"] >= 1
    assert web1_lib["restart"] == [{"kind": "process", "name": "python3[%d]" % replaced_library["pid"]}]
    assert entries(held_file["path"])[0]["class"] == "lost" and image[0]["class"] == "kernel"

    # A name that is not UTF-8 is there, in its text form.
    odd = entries(held_odd_name["shown"])
    assert sorted(o["host"] for o in odd) == ["web1", "web2"], [o["path"] for o in data["orphans"]]

    # A semaphore its creator unlinked on purpose is listed apart, not counted as lost.
    assert not entries(held_semaphore["path"])
    sem = [o for o in data["deliberate"] if o["path"] == held_semaphore["path"]]
    assert sorted(o["host"] for o in sem) == ["web1", "web2"] and sem[0]["deliberate"] == "posix_semaphore", sem
    assert "nothing was lost" in sem[0]["why"]
    assert data["totals"]["deliberate"] >= 2 and data["totals"]["orphans"] == len(data["orphans"])
    assert hosts["web1"]["orphans"] == len([o for o in data["orphans"] if o["host"] == "web1"])

    # What a reclaim gives back (frelink_reclaim's default rule): the appended log, not the file held read-write,
    # the loop image, the replaced library nor the semaphore; per host it adds up over filesystems and files.
    log = entries(held_log["path"])
    assert sorted(o["host"] for o in log) == ["web1", "web2"] and all(o["reclaimable"] for o in log), log
    assert log[0]["reclaimable_allocated"] == held_log["allocated"] >= 2 << 20
    assert not any(o["reclaimable"] for o in held + image + lib + data["deliberate"])
    every = data["orphans"] + data["replaced"] + data["deliberate"]
    for name in ("web1", "web2"):
        mine = sum(o["reclaimable_allocated"] for o in every if o["host"] == name)
        assert hosts[name]["reclaimable_allocated"] == mine >= held_log["allocated"]
        assert sum(f["reclaimable_allocated"] for f in data["filesystems"] if f["host"] == name) == mine
    assert data["totals"]["reclaimable_allocated"] == sum(h["reclaimable_allocated"] for h in data["hosts"])

    rows = list(csv.DictReader((report / "audit.csv").open()))
    log_row = next(r for r in rows if r["path"] == held_log["path"] and r["host"] == "web1")
    assert int(log_row["reclaimable_bytes"]) == held_log["allocated"]
    assert next(r for r in rows if r["path"] == held_file["path"])["reclaimable_bytes"] == "0"
    assert len(rows) == len(data["orphans"]) + len(data["replaced"]) + len(data["deliberate"])
    assert any(r["path"] == held_odd_name["shown"] for r in rows)
    assert next(r for r in rows if r["path"] == held_semaphore["path"])["deliberate"] == "posix_semaphore"
    row = next(r for r in rows if r["path"] == held_file["path"] and r["host"] == "web1")
    assert int(row["size_bytes"]) == held_file["size"]
    assert row["holder_kinds"] == "fd"

    markdown = (report / "audit.md").read_text()
    assert "| gone | unreachable |" in markdown
    assert held_file["path"] in markdown and loop_mounted_image["loop"] in markdown
    assert "## Deliberate" in markdown and held_semaphore["path"] in markdown
    assert "reclaimable without a restart" in markdown

    html = (report / "index.html").read_text()
    assert held_file["path"] in html and loop_mounted_image["path"] in html
    assert "What to restart" in html and replaced_library["path"] in html and held_odd_name["shown"] in html
    assert "reclaimable without a restart" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    check_screenshot(report / "index.html", tmp_path)


def png_pixel_bytes(data):
    """The decompressed image data of a PNG (row-filtered pixels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def check_screenshot(page, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("%s is missing (Debian package chromium, installed by scripts/bootstrap.sh)" % CHROMIUM)
    shot = tmp_path / "audit.png"
    profile = tempfile.mkdtemp(prefix="frelink-chromium-")
    try:
        run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--user-data-dir=%s" % profile, "--screenshot=%s" % shot,
             "--window-size=1280,1400", page.as_uri()], timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = png_pixel_bytes(shot.read_bytes())
    # A blank page is (after PNG row filtering) nearly one repeated byte.
    most_common = max(pixels.count(bytes([b])) for b in set(pixels[:: max(1, len(pixels) // 4096)]))
    assert most_common < 0.97 * len(pixels), "screenshot looks blank"
    assert len(set(pixels)) > 64, "screenshot has almost no detail"
    keep = REPO / "tests" / "output"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "audit.png")
    print("screenshot: %s" % (keep / "audit.png"))
