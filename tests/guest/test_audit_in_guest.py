"""The audit on a guest made to look like a real host after upgrades (bookworm 6.1, sid 7.x),
with the frelink module loaded, all through Ansible:

- a systemd service writing a log that was deleted (lost, its unit named);
- a library from a package, mapped by a running service, replaced by a real `dpkg -i`
  upgrade (replaced, with its package and unit: restart needed, nothing to restore);
- a config file bind-mounted into a container-like process (its own mount namespace, in a
  cgroup named as Podman names a container's) and replaced on the host by an atomic rename
  (a mount holder: kernel class, the container to restart), then restored as the same inode;
- a deliberate POSIX semaphore in a service (apart, nothing lost);
- held deleted files named with bytes that are not UTF-8, with a line feed, and plainly:
  listed, in the report and the metrics, and restored to their exact original bytes.

audit.yml writes the report on the controller; the restart table must add up, and the HTML
page is looked at in headless Chromium.  One guest boot per suite.
"""

import base64
import csv
import io
import json
import sys
from html import escape as html_escape
from pathlib import Path

import pytest

import harness
from guest_payload import load_frelink
from role_run import run_playbook

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "host"))
from test_audit import check_screenshot  # noqa: E402

SUITES = ("bookworm", "sid")
WORK = "/root/frelink-audit"
CONTAINER_ID = "c0ffee" * 10 + "c0fe"
LIB = "/usr/lib/frelink-demo/libfrelinkdemo.so.1"

SETUP = r"""
set -eu
W=%(work)s
mkdir -p $W/info $W/pkg
wait_for() { for i in $(seq 150); do [ -e "$1" ] && return 0; sleep 0.2; done; echo "no $1" >&2; exit 1; }
# a service writing a log that was deleted
systemd-run --quiet --unit=frelink-applog python3 $W/holder.py /var/log/frelink-app.log 2097152 idle $W/info/applog.json
# a package's library, mapped by a service, then upgraded with dpkg -i
for v in 1.0 2.0; do
  d=$W/pkg/$v
  mkdir -p $d/DEBIAN $d/usr/lib/frelink-demo
  printf 'Package: frelink-demo-lib\nVersion: %%s\nArchitecture: all\n' $v > $d/DEBIAN/control
  printf 'Maintainer: frelink <root@localhost>\nDescription: frelink test library\n' >> $d/DEBIAN/control
  cp $(python3 -c 'import glob; print(sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libz.so.1.*"))[-1])') $d%(lib)s
  dpkg-deb --root-owner-group -b $d $W/pkg/frelink-demo-lib_$v.deb >/dev/null
done
dpkg -i $W/pkg/frelink-demo-lib_1.0.deb >/dev/null
systemd-run --quiet --unit=frelink-libuser python3 -c \
  "import ctypes, time; ctypes.CDLL('%(lib)s'); open('$W/info/libuser.ok', 'w').close(); time.sleep(1e6)"
wait_for $W/info/libuser.ok
stat -c '{"dev": %%d, "ino": %%i}' %(lib)s > $W/info/lib.json
dpkg -i $W/pkg/frelink-demo-lib_2.0.deb >/dev/null
# a config file bind-mounted into a container, replaced on the host by a rename
mkdir -p /srv/h10 /srv/ctr /sys/fs/cgroup/machine.slice/libpod-%(cid)s.scope
echo 'setting = old' > /srv/h10/app.conf
: > /srv/ctr/app.conf
stat -c '{"dev": %%d, "ino": %%i}' /srv/h10/app.conf > $W/info/conf.json
setsid unshare -m --propagation private sh -c \
  "mount --bind /srv/h10/app.conf /srv/ctr/app.conf && echo \$\$ > $W/info/ctr.pid && exec sleep 1000000" \
  </dev/null >/dev/null 2>&1 &
wait_for $W/info/ctr.pid
sleep 0.5
echo $(cat $W/info/ctr.pid) > /sys/fs/cgroup/machine.slice/libpod-%(cid)s.scope/cgroup.procs
echo 'setting = new' > /srv/h10/app.conf.new
mv /srv/h10/app.conf.new /srv/h10/app.conf
# a deliberate semaphore in a service (the fork context unlinks it at once; Python 3.14's default,
# forkserver, keeps its name until exit)
systemd-run --quiet --unit=frelink-sem python3 -c \
  "import multiprocessing, time; lock = multiprocessing.get_context('fork').Lock(); open('$W/info/sem.ok', 'w').close(); time.sleep(1e6)"
# held deleted files whose names are bytes that are not UTF-8, a line feed, and plain text
mkdir -p /srv/names $W/prom
python3 - <<'EOF'
import subprocess
work = b"%(work)s"
for name, key in ((b"\xff\xfe.log", b"odd"), (b"two\nlines.log", b"lf"), (b"plain.log", b"plain")):
    subprocess.Popen([b"python3", work + b"/holder.py", b"/srv/names/" + name, b"4096", b"idle",
                      work + b"/info/name-" + key + b".json"], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
EOF
wait_for $W/info/applog.json
wait_for $W/info/sem.ok
for key in odd lf plain; do wait_for $W/info/name-$key.json; done
python3 - <<'EOF'
import json
info = "%(work)s/info/"
out = {"applog": json.load(open(info + "applog.json")), "lib": json.load(open(info + "lib.json")),
       "conf": json.load(open(info + "conf.json")), "ctr_pid": int(open(info + "ctr.pid").read())}
out["libuser_pid"] = int(open("/sys/fs/cgroup/system.slice/frelink-libuser.service/cgroup.procs").read().split()[0])
out["names"] = {key: json.load(open(info + "name-" + key + ".json")) for key in ("odd", "lf", "plain")}
print(json.dumps(out))
EOF
"""
# what the facts show for each name, and its exact bytes
NAMES = {"odd": ("/srv/names/\\xff\\xfe.log", b"/srv/names/\xff\xfe.log"),
         "lf": ("/srv/names/two\nlines.log", b"/srv/names/two\nlines.log"),
         "plain": ("/srv/names/plain.log", b"/srv/names/plain.log")}


def _restore_playbook(results_file, names):
    conf = {"path": "/srv/h10/app.conf"}
    old = dict(conf, dest="/srv/h10/app.conf.old")
    by_identity = {key: {"device": held["device"], "inode": held["ino"]} for key, held in names.items()}
    tasks = [
        {"name": "facts", "frelink.frelink.frelink_facts": {"limit": 0}, "register": "r_facts"},
        {"name": "facts-proc", "frelink.frelink.frelink_facts": {"limit": 0, "backend": "proc"},
         "register": "r_facts_proc"},
        {"name": "occupied", "frelink.frelink.frelink_restore": conf, "register": "r_occupied", "ignore_errors": True},
        {"name": "check", "frelink.frelink.frelink_restore": old, "register": "r_check", "check_mode": True},
        {"name": "restore", "frelink.frelink.frelink_restore": old, "register": "r_restore"},
        {"name": "again", "frelink.frelink.frelink_restore": old, "register": "r_again"},
        {"name": "after", "ansible.builtin.raw": "stat -c '%d %i %h' /srv/h10/app.conf.old; cat /srv/h10/app.conf.old "
                                                 "/srv/h10/app.conf", "register": "r_after", "changed_when": False},
    ]
    for key, selector in sorted(by_identity.items()):
        tasks.append({"name": "name-" + key, "frelink.frelink.frelink_restore": selector, "register": "r_name_" + key})
    tasks += [
        {"name": "name-odd-again", "frelink.frelink.frelink_restore": {"path": NAMES["odd"][0]},
         "register": "r_name_again"},
        {"name": "names-after", "ansible.builtin.raw": "python3 -c \"import json, os; print(json.dumps(sorted("
         "[n.hex(), os.stat(b'/srv/names/' + n).st_ino, os.stat(b'/srv/names/' + n).st_nlink] "
         "for n in os.listdir(b'/srv/names'))))\"", "register": "r_names_after", "changed_when": False},
        {"name": "save", "delegate_to": "localhost", "check_mode": False,
         "ansible.builtin.copy": {"dest": str(results_file), "mode": "0600", "content": "{{ {'facts': r_facts, "
                                  "'facts_proc': r_facts_proc, 'occupied': r_occupied, 'check': r_check, "
                                  "'restore': r_restore, 'again': r_again, 'after': r_after, 'name_odd': r_name_odd, "
                                  "'name_lf': r_name_lf, 'name_plain': r_name_plain, 'name_again': r_name_again, "
                                  "'names_after': r_names_after} | to_json }}"}},
    ]
    return [{"name": "restore the bind-mounted file", "hosts": "guest", "gather_facts": False, "tasks": tasks}]


@pytest.fixture(scope="module", params=SUITES)
def audited(request, tmp_path_factory):
    suite = request.param
    module = harness.build_module(suite, REPO / "kmod")
    tmp = tmp_path_factory.mktemp("audit-%s-" % suite)  # pytest's: removed with its old runs
    with harness.Guest(suite) as guest:
        load_frelink(guest, module, WORK)
        info = json.loads(guest.run(SETUP % {"work": WORK, "cid": CONTAINER_ID, "lib": LIB},
                                    timeout=600).stdout.splitlines()[-1])
        report = tmp / "report"
        audit, audit_out = run_playbook(guest, tmp, "- ansible.builtin.import_playbook: %s\n"
                                        % (REPO / "playbooks" / "audit.yml"),
                                        {"frelink_audit_dir": str(report), "frelink_audit_top_holders": 100,
                                         "frelink_textfile_dir": WORK + "/prom"},
                                        name="audit.yml")
        assert audit.returncode == 0, audit_out[-8000:]
        results_file = tmp / "results.json"
        metrics = guest.run("cat %s/prom/frelink.prom" % WORK).stdout
        _run, run_out = run_playbook(guest, tmp, json.dumps(_restore_playbook(results_file, info["names"]), indent=1),
                                     name="restore.yml")
        assert results_file.exists(), run_out[-10000:]
        yield {"suite": suite, "info": info, "report": report, "tmp": tmp, "audit": audit, "metrics": metrics,
               "data": json.loads((report / "audit.json").read_text()), "r": json.loads(results_file.read_text())}


def _by_path(data, section, path):
    found = [o for o in data[section] if o["path"] == path]
    assert len(found) == 1, (section, path, [o["path"] for o in data[section]])
    return found[0]


def test_each_file_has_its_class_and_unit(audited):
    data, info = audited["data"], audited["info"]
    log = _by_path(data, "orphans", "/var/log/frelink-app.log")
    assert log["class"] == "lost" and log["restore"] == "relink"
    assert log["restart"] == [{"kind": "unit", "name": "frelink-applog.service"}]

    lib = _by_path(data, "replaced", LIB)
    assert (lib["class"], lib["package"]) == ("replaced", "frelink-demo-lib")
    assert lib["restart"] == [{"kind": "unit", "name": "frelink-libuser.service"}]
    assert lib["restore"] == "nothing to restore: restart (frelink-libuser.service)"
    assert not [o for o in data["orphans"] if o["path"] == LIB]

    conf = _by_path(data, "orphans", "/srv/h10/app.conf")
    assert conf["class"] == "kernel" and conf["kinds"] == ["mount"]
    assert conf["restart"] == [{"kind": "container", "name": "podman " + CONTAINER_ID[:12]}]

    sem = [o for o in data["deliberate"] if o["deliberate"] == "posix_semaphore"
           and any("frelink-sem.service" in h for h in o["holders"])]
    assert sem, data["deliberate"]


def test_the_facts_carry_units_and_the_mount_holder_with_both_backends(audited):
    info = audited["info"]
    for key in ("facts", "facts_proc"):
        orphans = audited["r"][key]["ansible_facts"]["frelink"]["orphans"]
        conf = next(o for o in orphans if o["path"] == "/srv/h10/app.conf")
        (mount,) = conf["holders"]
        assert mount["kind"] == "mount" and mount["mount_point"] == "/srv/ctr/app.conf", conf
        assert mount["container"]["short_id"] == CONTAINER_ID[:12]
        assert (conf["dev"], conf["ino"]) == (info["conf"]["dev"], info["conf"]["ino"])
        lib = next(o for o in orphans if o["path"] == LIB)
        assert (lib["ino"], lib["class"]) == (info["lib"]["ino"], "replaced")
        assert {h["unit"] for h in lib["holders"]} == {"frelink-libuser.service"}
        assert {h["pid"] for h in lib["holders"]} == {info["libuser_pid"]}


def test_headline_and_restart_table_add_up(audited):
    data = audited["data"]
    totals, (host,) = data["totals"], data["hosts"]
    assert host["status"] == "ok", host
    assert totals["orphans"] == len(data["orphans"]) == host["orphans"]
    assert totals["replaced"] == len(data["replaced"]) >= 1
    assert sum(r["orphans"] for r in data["restart"]) == totals["orphans"] + totals["replaced"]
    assert sum(r["allocated"] for r in data["restart"]) == totals["pinned"] == host["pinned"]
    for cls in ("lost", "replaced", "kernel"):
        assert sum(r["by_class"][cls] for r in data["restart"]) == totals["by_class"][cls]["orphans"]
    rows = {tuple(t["name"] for t in r["targets"]): r for r in data["restart"]}
    libuser = rows[("frelink-libuser.service",)]
    assert libuser["by_class"]["replaced"] >= 1 and not libuser["loses_data"]
    assert libuser["targets"][0]["action"] == "systemctl restart frelink-libuser.service"
    assert rows[("frelink-applog.service",)]["loses_data"]
    assert audited["audit"].stdout.count("deleted file(s) at risk") == 1


def test_the_report_is_readable_in_a_browser(audited):
    html = (audited["report"] / "index.html").read_text()
    for text in ("What to restart", "frelink-libuser.service", "frelink-demo-lib", "/srv/h10/app.conf",
                 "restore first"):
        assert text in html, text
    check_screenshot(audited["report"] / "index.html", audited["tmp"])


def test_the_bind_mounted_file_is_restored_as_the_same_inode(audited):
    r, conf = audited["r"], audited["info"]["conf"]
    assert r["occupied"]["failed"] is True and "exists" in r["occupied"]["msg"], r["occupied"]
    assert r["check"]["changed"] is True and r["check"]["status"] == "would_restore", r["check"]
    res = r["restore"]
    assert res["changed"] is True and res["method"] == "link" and res["identity_preserved"] is True, res
    assert (res["dev"], res["ino"]) == (conf["dev"], conf["ino"])
    assert r["again"]["changed"] is False and r["again"]["status"] == "nothing_to_restore", r["again"]
    assert r["after"]["stdout"].splitlines() == ["%d %d 1" % (conf["dev"], conf["ino"]), "setting = old",
                                                 "setting = new"]


def test_every_name_is_listed_reported_counted_and_restored_to_its_bytes(audited):
    data, r, held = audited["data"], audited["r"], audited["info"]["names"]
    orphans = {o["ino"]: o for o in r["facts"]["ansible_facts"]["frelink"]["orphans"]}
    for key, (shown, exact) in NAMES.items():
        entry = orphans[held[key]["ino"]]
        assert entry["path"] == shown, entry
        if key == "odd":
            assert base64.b64decode(entry["path_b64"]) == exact
        else:
            assert "path_b64" not in entry
        reported = _by_path(data, "orphans", shown)
        assert reported["class"] == "lost" and reported["ino"] == held[key]["ino"]
    html = (audited["report"] / "index.html").read_text()
    rows = list(csv.DictReader(io.StringIO((audited["report"] / "audit.csv").read_text(), newline="")))
    for shown, _exact in NAMES.values():
        assert html_escape(shown) in html and any(row["path"] == shown for row in rows), shown
    # the metrics count what the report counts at risk, these three among them
    counted = [line for line in audited["metrics"].splitlines() if line.startswith("frelink_orphans ")]
    assert counted == ["frelink_orphans %d" % data["totals"]["orphans"]] and data["totals"]["orphans"] >= 5, counted
    for key in NAMES:
        res = r["name_" + key]
        assert res["changed"] is True and res["method"] == "link" and res["identity_preserved"] is True, res
    assert base64.b64decode(r["name_odd"]["dest_b64"]) == NAMES["odd"][1]
    again = r["name_again"]  # by the text the facts show: it finds the original bytes
    assert again["changed"] is False and again["status"] == "nothing_to_restore", again
    assert base64.b64decode(again["dest_b64"]) == NAMES["odd"][1]
    after = json.loads(r["names_after"]["stdout"])
    assert after == sorted([exact.rsplit(b"/", 1)[1].hex(), held[key]["ino"], 1] for key, (_s, exact) in NAMES.items())
