# -*- coding: utf-8 -*-
"""Prometheus textfile metrics: the frelink.frelink.prometheus_textfile filter and
playbooks/audit.yml with frelink_textfile_dir, against real deleted-but-held files.

The held file lives on a tmpfs mounted at a path with a space, a double quote and a
backslash (label escaping is exercised through the real mount table). The textfile
directory is another tmpfs, so Ansible's upload directory (~/.ansible/tmp) is on a
different filesystem: inotify then shows whether frelink.prom only ever appears by
one rename. The written file is parsed with prometheus_client's parser and checked
with `promtool check metrics` (Debian's prometheus package, from scripts/bootstrap.sh).

Containers: holders in their own mount namespace inside a cgroup named as Docker or
Podman names a container's (orphans.container_cgroup), which the real scan reports
as that container; the container series are checked against what each one holds.
"""
import contextlib
import ctypes
import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orphans import PYTHON, collection_path, container_cgroup, deleted_open_file, holder, require_root

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
PROMTOOL = "/usr/bin/promtool"
WEIRD = 'held "mnt" \\ x'  # a space, a double quote, a backslash

collection_path()
from ansible_collections.frelink.frelink.plugins.filter.prometheus_textfile import (  # noqa: E402
    FilterModule, escape_label_value, prometheus_textfile)
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import scan  # noqa: E402
from ansible.errors import AnsibleFilterError  # noqa: E402

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, name, **labels):
    """The one sample with these labels (the host's, without a container label, unless container is given)."""
    samples = [s for s in fams[name].samples if all(s.labels.get(k) == v for k, v in labels.items())
               and ("container" in labels or "container" not in s.labels)]
    assert len(samples) == 1, (name, labels, fams[name].samples)
    return samples[0].value


# -- the filter on its own (no root needed) ----------------------------------

FACTS = {
    "summary": {"count": 3, "listed": 2, "truncated": True, "bytes_pinned": 12288, "bytes_apparent": 10000,
                "by_kind": {"fd": 2, "mmap": 1, "cwd": 0, "root": 0, "exe": 0, "loop": 1, "swap": 0},
                "mapped_only": 1,
                "by_filesystem": [
                    {"device": "254:0", "mount_point": '/srv/a "b"\\c\nd', "fstype": "ext4", "count": 2,
                     "bytes_pinned": 8192, "free_bytes": 1000},
                    {"device": None, "mount_point": None, "fstype": None, "count": 1, "bytes_pinned": 4096,
                     "free_bytes": None}]},
    "orphans": [
        {"allocated": 8192, "holders": [{"kind": "fd"}, {"kind": "mmap"}, {"kind": "fd"}]},
        {"allocated": None, "holders": [{"kind": "loop"}]},
    ],
    "scan": {"complete": False, "warnings": ["w1", "w2"], "processes": 10, "fds": 99, "kinds": ["fd"], "euid": 0},
}


def test_filter_values_labels_and_escaping():
    text = prometheus_textfile(FACTS, timestamp=1700000000.5)
    assert text.endswith("\n") and not text.endswith("\n\n")
    fams = families(text)
    assert all(f.type == "gauge" and f.documentation for f in fams.values())
    assert value(fams, "frelink_scan_success") == 1 and value(fams, "frelink_scan_complete") == 0
    assert value(fams, "frelink_scan_timestamp_seconds") == 1700000000.5
    assert value(fams, "frelink_scan_warnings") == 2 and value(fams, "frelink_scan_fds") == 99
    assert value(fams, "frelink_orphans") == 3 and value(fams, "frelink_orphans_listed") == 2
    assert value(fams, "frelink_pinned_bytes") == 12288 and value(fams, "frelink_apparent_bytes") == 10000
    assert value(fams, "frelink_orphans_by_kind", kind="mmap") == 1
    assert {s.labels["kind"] for s in fams["frelink_orphans_by_kind"].samples} == {
        "fd", "mmap", "cwd", "root", "exe", "loop", "swap", "mount"}
    # an orphan counts once per kind, however many holders of that kind
    assert value(fams, "frelink_pinned_bytes_by_kind", kind="fd") == 8192
    assert value(fams, "frelink_pinned_bytes_by_kind", kind="mmap") == 8192
    assert value(fams, "frelink_pinned_bytes_by_kind", kind="loop") == 0
    # the parser gives back the exact mount point: escaping round-trips
    assert value(fams, "frelink_filesystem_pinned_bytes", mountpoint='/srv/a "b"\\c\nd', fstype="ext4",
                 devno="254:0") == 8192
    assert value(fams, "frelink_filesystem_orphans", mountpoint="", fstype="") == 1
    assert len(fams["frelink_filesystem_free_bytes"].samples) == 1  # unknown free space: no sample
    assert 'mountpoint="/srv/a \\"b\\"\\\\c\\nd"' in text
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert "frelink_" + "orphans" in FilterModule().filters()["prometheus_textfile"](FACTS)


def test_filter_registered_results():
    ok = families(prometheus_textfile({"changed": False, "ansible_facts": {"frelink": FACTS}}, timestamp=1))
    assert value(ok, "frelink_orphans") == 3
    failed = families(prometheus_textfile({"failed": True, "msg": "scanning /proc failed"}, timestamp=2))
    assert set(failed) == {"frelink_scan_success", "frelink_scan_timestamp_seconds"}
    assert value(failed, "frelink_scan_success") == 0
    before = time.time()
    stamped = families(prometheus_textfile(FACTS, prefix="node_frelink_"))
    assert before <= value(stamped, "node_frelink_scan_timestamp_seconds") <= time.time()
    for bad in ("not a dict", {"something": "else"}):
        with pytest.raises(AnsibleFilterError):
            prometheus_textfile(bad)
    with pytest.raises(AnsibleFilterError):
        prometheus_textfile(FACTS, timestamp="yesterday")
    with pytest.raises(AnsibleFilterError):
        prometheus_textfile(FACTS, prefix="9bad")


def test_filter_container_edge_cases():
    """Facts of an older module (no bytes_by_kind), a container without short_id, a label value that needs escaping."""
    odd = {"runtime": "docker", "id": 'c"\\\n' + "0" * 61}  # no short_id: the id's first 12 characters
    facts = {"summary": {"count": 2, "listed": 2, "bytes_pinned": 300, "by_kind": {"fd": 2},
                         "by_filesystem": [{"device": "0:50", "mount_point": "/v", "fstype": "tmpfs", "count": 2,
                                            "bytes_pinned": 300, "free_bytes": 1}]},
             "orphans": [{"device": "0:50", "allocated": 100, "holders": [{"kind": "fd", "container": odd}]},
                         {"device": "0:99", "fstype": "xfs", "mount_point": "/w", "allocated": 200,
                          "holders": [{"kind": "fd"}, {"kind": "fd", "container": odd}]}],
             "scan": {"complete": True}}
    text = prometheus_textfile(facts, timestamp=1)
    fams = families(text)
    name = 'c"\\\n' + "0" * 8
    assert 'container="c\\"\\\\\\n00000000"' in text
    assert value(fams, "frelink_orphans_by_kind", kind="fd") == 1  # the summary's 2, less the container-only one
    assert value(fams, "frelink_orphans_by_kind", kind="fd", container=name) == 2
    # no bytes_by_kind: summed over the listed orphans, the host's over those it holds
    assert value(fams, "frelink_pinned_bytes_by_kind", kind="fd") == 200
    assert value(fams, "frelink_pinned_bytes_by_kind", kind="fd", container=name) == 300
    assert value(fams, "frelink_filesystem_orphans", devno="0:50") == 1
    assert value(fams, "frelink_filesystem_orphans", devno="0:50", container=name) == 1
    # a device the summary does not name keeps the orphan's own labels (and no host series)
    assert value(fams, "frelink_filesystem_pinned_bytes", devno="0:99", fstype="xfs", mountpoint="/w",
                 container=name) == 200
    assert [s for s in fams["frelink_filesystem_pinned_bytes"].samples if s.labels["devno"] == "0:99"
            and "container" not in s.labels] == []
    assert value(fams, "frelink_orphans") == 2 and value(fams, "frelink_pinned_bytes") == 300
    for bad in ("docker", {"runtime": "docker"}):
        broken = dict(facts, orphans=[{"device": "0:50", "holders": [{"kind": "fd", "container": bad}]}])
        with pytest.raises(AnsibleFilterError):
            prometheus_textfile(broken)


def test_filter_reclaimable_by_the_reclaim_rule():
    """frelink_reclaimable_*: the listed orphans that frelink_reclaim truncates by default (reclaim/rules.py)."""
    log = {"kind": "fd", "pid": 1, "fd": 3, "mode": "wa"}
    facts = {"summary": {"count": 4, "listed": 4, "bytes_pinned": 15, "by_kind": {"fd": 4, "mmap": 1},
                         "by_filesystem": [
                             {"device": "254:0", "mount_point": "/var", "fstype": "ext4", "count": 3,
                              "bytes_pinned": 7, "free_bytes": 1},
                             {"device": "254:1", "mount_point": "/srv", "fstype": "xfs", "count": 1,
                              "bytes_pinned": 8, "free_bytes": 1}]},
             "orphans": [
                 {"device": "254:0", "class": "lost", "allocated": 1, "holders": [log]},
                 {"device": "254:0", "class": "lost", "allocated": 2, "holders": [dict(log, mode="w")]},
                 {"device": "254:0", "class": "lost", "allocated": 4, "holders": [log, {"kind": "mmap", "pid": 2}]},
                 {"device": "254:1", "class": "lost", "allocated": 8, "holders": [dict(log, mode="rw")]}],
             "scan": {"complete": True}}
    fams = families(prometheus_textfile(facts, timestamp=1))
    assert value(fams, "frelink_reclaimable_orphans") == 2 and value(fams, "frelink_reclaimable_bytes") == 3
    assert value(fams, "frelink_filesystem_reclaimable_bytes", devno="254:0", mountpoint="/var", fstype="ext4") == 3
    assert value(fams, "frelink_filesystem_reclaimable_bytes", devno="254:1", mountpoint="/srv", fstype="xfs") == 0
    # a mapped or read-write file stays pinned, not reclaimable
    assert value(fams, "frelink_filesystem_pinned_bytes", devno="254:1") == 8


# -- the audit playbook on this host ------------------------------------------

@contextlib.contextmanager
def tmpfs(path, size="32m"):
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class Inotify:
    """Events on one directory (ctypes: the standard library has no inotify)."""

    def __init__(self, path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = self.libc.inotify_add_watch(self.fd, str(path).encode(), IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def events(self):
        found = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            pos = 0
            while pos < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
                name = data[pos + 16:pos + 16 + length].split(b"\0", 1)[0].decode()
                found.append((name, mask))
                pos += 16 + length

    def close(self):
        os.close(self.fd)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_audit(tmp_path, textfile_dir, check=False):
    report = tmp_path / ("report-check" if check else "report")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "web1 ansible_connection=local ansible_python_interpreter=%s frelink_textfile_dir='%s'\n"
        "gone ansible_host=127.0.0.1 ansible_port=%d ansible_user=root "
        "ansible_ssh_common_args='-o ConnectTimeout=10 -o BatchMode=yes'\n" % (SYSTEM_PYTHON, textfile_dir, closed_port()))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / "audit.yml"),
                           "-e", "frelink_audit_dir=%s" % report] + (["--check"] if check else []),
                          env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    print("audit.yml%s took %.1f s" % (" --check" if check else "", time.monotonic() - started))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_audit_writes_textfile_metrics(tmp_path):
    require_root()
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail("%s is missing (Debian package prometheus, installed by scripts/bootstrap.sh)" % PROMTOOL)
    with tmpfs(tmp_path / WEIRD) as held_fs, tmpfs(tmp_path / "textfile") as textfile_dir, \
            deleted_open_file(held_fs, size=3 << 20, name="precious.log") as held, \
            container_cgroup("docker") as ctr, contextlib.ExitStack() as stack:
        allocated = held.blocks * 512
        assert allocated >= 3 << 20
        in_container = held_fs / "in-container.log"  # held by a process in a Docker container
        in_container.write_bytes(os.urandom(1 << 20))
        contained_allocated = in_container.stat().st_blocks * 512
        stack.enter_context(ctr.holder(_opens(str(in_container))))
        in_container.unlink()
        # a log still appended to: what frelink_reclaim frees (the two files above are held read-only: not)
        service_log = held_fs / "service.log"
        service_log.write_bytes(os.urandom(2 << 20))
        stack.enter_context(holder("out['fd'] = os.open(%r, os.O_WRONLY | os.O_APPEND)" % str(service_log)))
        log_allocated = service_log.stat().st_blocks * 512
        service_log.unlink()

        run_audit(tmp_path, textfile_dir, check=True)  # check mode changes nothing
        assert not (textfile_dir / "frelink.prom").exists()

        watch = Inotify(textfile_dir)
        try:
            before = time.time()
            run_audit(tmp_path, textfile_dir)
            after = time.time()
            events = watch.events()
        finally:
            watch.close()
        prom = textfile_dir / "frelink.prom"
        assert oct(prom.stat().st_mode & 0o777) == "0o644"
        # frelink.prom appeared by one rename, and no other *.prom was ever made there
        prom_events = [(name, mask) for name, mask in events if name.endswith(".prom")]
        assert prom_events == [("frelink.prom", IN_MOVED_TO)], events
        assert sorted(os.listdir(textfile_dir)) == [".frelink-tmp", "frelink.prom"]
        assert os.listdir(textfile_dir / ".frelink-tmp") == []

        text = prom.read_text()
        fams = families(text)
        assert value(fams, "frelink_scan_success") == 1
        assert before - 1 <= value(fams, "frelink_scan_timestamp_seconds") <= after + 1
        assert value(fams, "frelink_orphans") >= 1 and value(fams, "frelink_orphans_by_kind", kind="fd") >= 1
        # ansible-playbook's own multiprocessing semaphores: apart, not in the headline
        assert value(fams, "frelink_orphans_deliberate", idiom="posix_semaphore") >= 1
        assert value(fams, "frelink_pinned_bytes_deliberate") >= 0
        assert value(fams, "frelink_pinned_bytes") >= allocated
        assert value(fams, "frelink_pinned_bytes_by_kind", kind="fd") >= allocated
        # the held file and the log are the host's orphans of its tmpfs, at a mount point that needs escaping;
        # the container's file has its own series
        mountpoint = str(held_fs)
        assert value(fams, "frelink_filesystem_orphans", mountpoint=mountpoint, fstype="tmpfs") == 2
        assert value(fams, "frelink_filesystem_pinned_bytes", mountpoint=mountpoint, fstype="tmpfs") \
            == allocated + log_allocated
        assert value(fams, "frelink_filesystem_reclaimable_bytes", mountpoint=mountpoint, fstype="tmpfs") \
            == log_allocated >= 2 << 20
        assert value(fams, "frelink_reclaimable_bytes") >= log_allocated
        assert value(fams, "frelink_reclaimable_orphans") >= 1
        assert value(fams, "frelink_filesystem_orphans", mountpoint=mountpoint, fstype="tmpfs",
                     container=ctr.short_id) == 1
        assert value(fams, "frelink_filesystem_pinned_bytes", mountpoint=mountpoint, fstype="tmpfs",
                     container=ctr.short_id) == contained_allocated
        assert value(fams, "frelink_orphans_by_kind", kind="fd", container=ctr.short_id) == 1
        assert value(fams, "frelink_filesystem_free_bytes", mountpoint=mountpoint, fstype="tmpfs") > 0
        assert '\\"mnt\\" \\\\ x' in text
        # the scan is partial on hosts where even root cannot inspect some process (warnings say which)
        assert value(fams, "frelink_scan_complete") == (value(fams, "frelink_scan_warnings") == 0)

        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), \
            check.stdout + check.stderr
        assert os.stat(held.proc_path).st_nlink == 0  # nothing was restored or changed


def test_audit_refuses_missing_textfile_dir(tmp_path):
    """A wrong directory fails that host with a message, and is not created (Ansible would make it 0700)."""
    require_root()
    missing = tmp_path / "no-such-dir"
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("web1 ansible_connection=local ansible_python_interpreter=%s\n" % SYSTEM_PYTHON)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / "audit.yml"),
                           "-e", "frelink_audit_dir=%s" % (tmp_path / "report"),
                           "-e", "frelink_textfile_dir=%s" % missing],
                          env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "is not a directory on web1" in proc.stdout, proc.stdout
    assert not missing.exists()
    assert (tmp_path / "report" / "audit.json").exists()  # the report is still written
    shutil.rmtree(tmp_path / "report")


# -- containers: a real scan ----------------------------------------------------

def _opens(*paths):
    return "out['fds'] = [os.open(p, os.O_RDONLY) for p in %r]\n" % (list(paths),)


def _maps(path):
    """Holder code: a shared mapping of PATH, its fd closed (libc mmap: Python's mmap keeps a dup of the fd)."""
    return ("import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.mmap.restype = ctypes.c_void_p\n"
            "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,"
            " ctypes.c_long]\n"
            "fd = os.open(%r, os.O_RDONLY)\n"
            "addr = libc.mmap(None, os.fstat(fd).st_size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)\n"
            "assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()\n"
            "os.close(fd)\n" % path)


def test_container_series_from_a_real_scan(tmp_path):
    """Six deleted files on one tmpfs, held by the host, a process in its own mount namespace (no container),
    a Docker container and a Podman one; the real scan's facts through the filter, with every orphan listed
    and with two."""
    require_root()
    sizes = {"host.dat": 8 << 10, "c1.dat": 16 << 10, "shared.dat": 32 << 10, "both.dat": 64 << 10,
             "mapped.dat": 128 << 10, "ns.dat": 256 << 10}
    with tmpfs(tmp_path / WEIRD) as fs, container_cgroup("docker") as c1, container_cgroup("podman") as c2:
        paths = dict((name, str(fs / name)) for name in sizes)
        allocated = {}
        for name, size in sizes.items():
            Path(paths[name]).write_bytes(os.urandom(size))
            allocated[name] = os.stat(paths[name]).st_blocks * 512
        with holder(_opens(paths["host.dat"], paths["shared.dat"])), \
                holder(_opens(paths["ns.dat"]), argv=["unshare", "-m", PYTHON]), \
                c1.holder(_opens(paths["c1.dat"], paths["shared.dat"], paths["both.dat"])), \
                c2.holder(_opens(paths["both.dat"]) + _maps(paths["mapped.dat"])):
            for path in paths.values():
                os.unlink(path)
            include = [glob.escape(str(fs)) + "/*"]
            # through JSON, as Ansible hands the facts to the filter
            facts = json.loads(json.dumps(scan(include=include, limit=0)))
            truncated = json.loads(json.dumps(scan(include=include, limit=2)))

    # what the collector reports: the containers by their cgroups, the plain namespace as no container
    places = dict((entry["path"].rsplit("/", 1)[1], sorted(h.get("container", {}).get("short_id", "host")
                                                           for h in entry["holders"])) for entry in facts["orphans"])
    assert places == {"host.dat": ["host"], "ns.dat": ["host"], "c1.dat": [c1.short_id],
                      "shared.dat": sorted(["host", c1.short_id]), "both.dat": sorted([c1.short_id, c2.short_id]),
                      "mapped.dat": [c2.short_id]}, places
    runtimes = set((h["container"]["runtime"], h["container"]["short_id"])
                   for entry in facts["orphans"] for h in entry["holders"] if "container" in h)
    assert runtimes == {("docker", c1.short_id), ("podman", c2.short_id)}
    assert facts["summary"]["count"] == facts["summary"]["listed"] == 6

    text = prometheus_textfile(facts, timestamp=1)
    fams = families(text)
    on_fs = dict(mountpoint=str(fs), fstype="tmpfs")

    def held(*names):
        return sum(allocated[name] for name in names)

    # the headline counts each orphan once
    assert value(fams, "frelink_orphans") == 6 and value(fams, "frelink_pinned_bytes") == held(*sizes)
    # each place counts what it holds; the host (no label) includes the namespace without a container
    expected = {None: ("host.dat", "shared.dat", "ns.dat"), c1.short_id: ("c1.dat", "shared.dat", "both.dat"),
                c2.short_id: ("both.dat", "mapped.dat")}
    for place, names in expected.items():
        labels = dict(on_fs, **({"container": place} if place else {}))
        assert value(fams, "frelink_filesystem_orphans", **labels) == len(names), place
        assert value(fams, "frelink_filesystem_pinned_bytes", **labels) == held(*names), place
    assert set(s.labels.get("container") for s in fams["frelink_filesystem_orphans"].samples) == {
        None, c1.short_id, c2.short_id}
    # per kind: both.dat has fd holders only in containers, mapped.dat only a mapping in c2
    kinds = {None: {"fd": ("host.dat", "shared.dat", "ns.dat"), "mmap": ()},
             c1.short_id: {"fd": ("c1.dat", "shared.dat", "both.dat"), "mmap": ()},
             c2.short_id: {"fd": ("both.dat",), "mmap": ("mapped.dat",)}}
    for place, by_kind in kinds.items():
        extra = {"container": place} if place else {}
        for kind, names in by_kind.items():
            assert value(fams, "frelink_orphans_by_kind", kind=kind, **extra) == len(names), (place, kind)
            assert value(fams, "frelink_pinned_bytes_by_kind", kind=kind, **extra) == held(*names), (place, kind)
        assert value(fams, "frelink_orphans_by_kind", kind="loop", **extra) == 0  # every kind for every place
    # summed over container: once per place, so the two files held from two places count twice
    assert sum(s.value for s in fams["frelink_filesystem_orphans"].samples
               if s.labels["mountpoint"] == str(fs)) == 6 + 2
    assert [s.labels for s in fams["frelink_filesystem_free_bytes"].samples if "container" in s.labels] == []
    assert 'container="%s"' % c1.short_id in text and '\\"mnt\\" \\\\ x' in text
    if os.access(PROMTOOL, os.X_OK):  # test_audit_writes_textfile_metrics fails without it
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr

    # limit=2 lists the two largest (ns.dat on the host, mapped.dat in c2): what is not listed stays the host's
    assert sorted(e["path"].rsplit("/", 1)[1] for e in truncated["orphans"]) == ["mapped.dat", "ns.dat"]
    cut = families(prometheus_textfile(truncated, timestamp=1))
    assert value(cut, "frelink_orphans") == 6
    assert value(cut, "frelink_filesystem_orphans", **on_fs) == 5
    assert value(cut, "frelink_filesystem_pinned_bytes", **on_fs) == held(*sizes) - held("mapped.dat")
    assert value(cut, "frelink_filesystem_orphans", container=c2.short_id, **on_fs) == 1
    assert value(cut, "frelink_orphans_by_kind", kind="fd") == 5
    assert value(cut, "frelink_orphans_by_kind", kind="mmap") == 0
    assert value(cut, "frelink_orphans_by_kind", kind="mmap", container=c2.short_id) == 1
    assert value(cut, "frelink_orphans_by_kind", kind="fd", container=c2.short_id) == 0
    assert c1.short_id not in set(s.labels.get("container") for s in cut["frelink_orphans_by_kind"].samples)
