# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit's data model (the audit_report filter) and its CSV (audit_csv) on captured facts."""

import csv
import io

from ansible_collections.frelink.frelink.plugins.filter.audit_csv import audit_csv
from ansible_collections.frelink.frelink.plugins.filter.audit_report import audit_report


def _host(orphans, **scan):
    info = {"complete": True, "warnings": []}
    info.update(scan)
    return {"frelink_audit_scan": {"changed": False, "ansible_facts": {"frelink": {
        "summary": {}, "scan": info, "orphans": orphans}}}}


def _orphan(path, klass, allocated, holders, **extra):
    orphan = {"path": path, "class": klass, "allocated": allocated, "size": allocated, "device": "254:0",
              "ino": allocated, "fstype": "ext4", "mount_point": "/", "holders": holders,
              "restore": {"relink": True, "reflink": False}}
    orphan.update(extra)
    return orphan


def test_audit_report_restart_table_adds_up():
    web = [{"kind": "fd", "pid": 10, "name": "nginx", "user": "www", "unit": "nginx.service"}]
    db = [{"kind": "fd", "pid": 20, "name": "postgres", "user": "pg", "unit": "postgresql@15-main.service"}]
    both = web + db
    hostvars = {
        "a": _host([
            _orphan("/var/log/nginx/access.log", "lost", 4096, web),
            _orphan("/usr/lib/x86_64-linux-gnu/libssl.so.3", "replaced", 8192,
                    [dict(web[0], kind="mmap", range="7f-80")], package="libssl3"),
            _orphan("/srv/shared.dat", "lost", 1000, both),
            _orphan("/var/lib/vm.img", "kernel", 100000, [{"kind": "loop", "device": "/dev/loop0", "mounts": ["/mnt"]}]),
            _orphan("/dev/shm/sem.x", "deliberate", 4096, db, deliberate={"idiom": "posix_semaphore", "why": "w"}),
        ]),
        "b": {"frelink_audit_scan": {"unreachable": True, "msg": "ssh: connect refused"}},
        "c": _host([], complete=False, warnings=["not root"]),
    }
    report = audit_report(["c", "b", "a"], hostvars, top_holders=3, generated="now")
    totals = report["totals"]
    assert (totals["hosts"], totals["hosts_failed"], totals["hosts_with_orphans"]) == (3, 1, 1)
    assert (totals["orphans"], totals["allocated"]) == (3, 4096 + 1000 + 100000)
    assert (totals["replaced"], totals["replaced_allocated"], totals["deliberate"]) == (1, 8192, 1)
    assert totals["pinned"] == 4096 + 1000 + 100000 + 8192
    assert [h["status"] for h in report["hosts"]] == ["ok", "unreachable", "partial"]
    rows = {tuple(t["name"] for t in r["targets"]): r for r in report["restart"]}
    assert set(rows) == {("nginx.service",), ("nginx.service", "postgresql@15-main.service"), ("/dev/loop0",)}
    nginx = rows[("nginx.service",)]
    assert (nginx["orphans"], nginx["allocated"]) == (2, 4096 + 8192)
    assert nginx["by_class"] == {"lost": 1, "replaced": 1, "kernel": 0}
    assert nginx["loses_data"] and nginx["targets"][0]["action"] == "systemctl restart nginx.service"
    assert rows[("/dev/loop0",)]["targets"][0]["kind"] == "loop"
    # every held deleted file but the deliberate one is in exactly one row
    assert sum(r["orphans"] for r in report["restart"]) == totals["orphans"] + totals["replaced"]
    assert sum(r["allocated"] for r in report["restart"]) == totals["pinned"]
    replaced = report["replaced"][0]
    assert replaced["package"] == "libssl3" and replaced["restore"] == "nothing to restore: restart (nginx.service)"
    at_risk = ["/var/lib/vm.img", "/var/log/nginx/access.log", "/srv/shared.dat"]
    assert [o["path"] for o in report["orphans"]] == at_risk
    assert len(report["top_holders"]) == 3

    table = list(csv.DictReader(io.StringIO(audit_csv(report))))
    assert [r["class"] for r in table] == ["kernel", "lost", "lost", "replaced", "deliberate"]
    assert table[3]["package"] == "libssl3" and table[3]["restart"] == "unit:nginx.service"


def test_audit_csv_keeps_any_name_in_its_cell():
    odd = "/srv/a,\"b\"\nc \\xff.log"
    report = audit_report(["h"], {"h": _host([_orphan(odd, "lost", 10, [])])})
    (row,) = list(csv.DictReader(io.StringIO(audit_csv(report))))
    assert row["path"] == odd


def test_audit_report_reads_facts_of_an_older_module():
    """No class in the facts: deliberate, kernel-only holders and the rest (lost) are told apart."""
    old = [_orphan("/a", None, 10, [{"kind": "fd", "pid": 1}]),
           _orphan("/b", None, 20, [{"kind": "loop", "device": "/dev/loop1"}]),
           _orphan("/dev/shm/sem.c", None, 30, [{"kind": "mmap", "pid": 1}], deliberate={"idiom": "posix_semaphore"})]
    for orphan in old:
        del orphan["class"]
    report = audit_report(["h"], {"h": _host(old)})
    assert sorted((o["path"], o["class"]) for o in report["orphans"] + report["deliberate"]) == [
        ("/a", "lost"), ("/b", "kernel"), ("/dev/shm/sem.c", "deliberate")]


def test_reclaim_rule_refuses_with_why_and_what_to_restart():
    """plugins/module_utils/_frelink/reclaim/rules.py: the one rule of what a reclaim truncates by default."""
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim import rules
    log = {"kind": "fd", "pid": 10, "fd": 3, "name": "nginx", "mode": "wa", "unit": "nginx.service"}

    def rules_of(entry, allow_read_write=False):
        return [rule for rule, _why in rules.refusals(entry, allow_read_write)]

    assert rules_of(_orphan("/var/log/a.log", "lost", 4096, [log])) == []
    writers = [log, dict(log, mode="w", fd=4), dict(log, mode="r", fd=5)]
    assert rules.reclaimable_bytes(_orphan("/var/log/a.log", "lost", 4096, writers)) == 4096
    assert rules_of(_orphan("/srv/db", "lost", 1, [dict(log, mode="rw")])) == ["read_write"]
    assert rules_of(_orphan("/srv/db", "lost", 1, [dict(log, mode="rw")]), allow_read_write=True) == []
    assert rules_of(_orphan("/srv/ro", "lost", 1, [dict(log, mode="r")])) == ["read_write"]
    assert rules_of(_orphan("/srv/unknown", "lost", 1, [dict(log, mode=None)])) == ["read_write"]
    mapped = _orphan("/srv/m", "lost", 1, [log, {"kind": "mmap", "pid": 11, "name": "app", "range": "7f-80"}])
    assert rules_of(mapped, allow_read_write=True) == ["mapped"]
    why = dict(rules.refusals(mapped))["mapped"]
    assert "SIGBUS" in why and "systemd unit nginx.service" in why and "process app[11]" in why
    assert rules_of(_orphan("/bin/x", "lost", 1, [log, {"kind": "exe", "pid": 12}])) == ["executable"]
    assert rules_of(_orphan("/l.so", "replaced", 1, [log])) == ["class"]
    assert rules_of(_orphan("/dev/shm/sem.x", "deliberate", 1, [log], deliberate={"idiom": "posix_semaphore"})) \
        == ["class"]
    loop = {"kind": "loop", "device": "/dev/loop0"}
    assert rules_of(_orphan("/vm.img", "kernel", 1, [loop]), allow_read_write=True) == ["class"]
    assert "loop device /dev/loop0" in rules.refusals(_orphan("/vm.img", "kernel", 1, [loop]))[0][1]
    assert rules_of(_orphan("/vm.img", "lost", 1, [log, loop])) == ["kernel_holder"]
    assert rules_of(_orphan("/many", "lost", 1, [log], holder_count=17)) == ["holders_not_listed"]
    assert rules_of(_orphan("/cwd", "lost", 1, [{"kind": "cwd", "pid": 1}])) == ["no_descriptor"]
    assert rules_of(_orphan("/d", "lost", 1, [log], type="directory")) == ["not_a_file"]
    assert rules.reclaimable_bytes(mapped) == 0


def test_audit_report_counts_what_a_reclaim_gives_back():
    log = [{"kind": "fd", "pid": 10, "fd": 3, "name": "nginx", "mode": "wa", "unit": "nginx.service"}]
    db = [{"kind": "fd", "pid": 20, "fd": 7, "name": "postgres", "mode": "rw", "unit": "postgresql.service"}]
    hostvars = {
        "a": _host([
            _orphan("/var/log/nginx/access.log", "lost", 4096, log),
            _orphan("/var/log/nginx/error.log", "lost", 1024, log, device="254:1", mount_point="/var"),
            _orphan("/srv/db", "lost", 8192, db),
            _orphan("/usr/lib/libssl.so.3", "replaced", 2048, [dict(log[0], kind="mmap", range="7f-80")]),
            _orphan("/dev/shm/sem.x", "deliberate", 512, log, deliberate={"idiom": "posix_semaphore"}),
        ]),
        "b": _host([_orphan("/srv/db", "lost", 8192, db)]),
    }
    report = audit_report(["a", "b"], hostvars)
    totals = report["totals"]
    assert (totals["reclaimable"], totals["reclaimable_allocated"]) == (2, 4096 + 1024)
    assert totals["reclaimable_allocated_human"] == "5.00 KB"
    hosts = {h["name"]: h for h in report["hosts"]}
    assert (hosts["a"]["reclaimable"], hosts["a"]["reclaimable_allocated"]) == (2, 5120)
    assert (hosts["b"]["reclaimable"], hosts["b"]["reclaimable_allocated"]) == (0, 0)
    by_fs = {(f["host"], f["mount_point"]): f for f in report["filesystems"]}
    assert by_fs[("a", "/")]["reclaimable_allocated"] == 4096 and by_fs[("a", "/var")]["reclaimable_allocated"] == 1024
    assert by_fs[("b", "/")]["reclaimable_allocated"] == 0
    rows = {(o["host"], o["path"]): o for o in report["orphans"] + report["replaced"] + report["deliberate"]}
    assert rows[("a", "/var/log/nginx/access.log")]["reclaimable"] is True
    assert rows[("a", "/srv/db")]["reclaimable"] is False
    assert rows[("a", "/usr/lib/libssl.so.3")]["reclaimable"] is False
    assert rows[("a", "/dev/shm/sem.x")]["reclaimable"] is False
    table = {(r["host"], r["path"]): r for r in csv.DictReader(io.StringIO(audit_csv(report)))}
    assert table[("a", "/var/log/nginx/access.log")]["reclaimable_bytes"] == "4096"
    assert table[("a", "/srv/db")]["reclaimable_bytes"] == "0"
