"""The collection on a fleet: three guests at once (bookworm 6.1, trixie 6.12, sid 7.x)
in one inventory with one unreachable host, as an operator runs it.

Each guest has the module loaded and a process holding a file it deleted
(payload/holder.py, as in test_restore_in_guest.py).
audit.yml writes one report naming every host (the unreachable one with its reason);
recover.yml gives the file its name back on all three in one run, and a rerun changes
nothing. The controller's CPU time for frelink_facts with default options is measured
per host (os.wait4 of the ansible process, printed; never asserted).
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from guest_payload import load_frelink
from role_run import recap

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HELD = "/srv/fleet/app.log"
UNREACHABLE = "gone"


def _closed_port():
    """A loopback port nothing listens on: the unreachable host's."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inventory(path, guests):
    args = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o ConnectTimeout=30 -o IdentitiesOnly=yes")
    lines = ["[fleet]"]
    for name, guest in guests.items():
        lines.append("%s ansible_host=127.0.0.1 ansible_port=%d ansible_user=root ansible_ssh_private_key_file=%s"
                     % (name, guest.ssh_port, guest.ssh_key))
    lines.append("%s ansible_host=127.0.0.1 ansible_port=%d ansible_user=root" % (UNREACHABLE, _closed_port()))
    lines += ["", "[fleet:vars]", "ansible_python_interpreter=/usr/bin/python3", "ansible_ssh_common_args='%s'" % args]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ansible(tool, argv, cwd):
    """Run an Ansible command line: its exit code, output and controller CPU seconds."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_PIPELINING="1", ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_LOCALHOST_WARNING="false")
    proc = subprocess.Popen([str(BIN / tool)] + argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    status, usage = os.wait4(proc.pid, 0)[1:]
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "out": output, "cpu": usage.ru_utime + usage.ru_stime}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    modules = {suite: harness.build_module(suite, REPO / "kmod") for suite in harness.SUITES}
    guests = {}
    try:
        for suite in harness.SUITES:
            guests[suite] = harness.Guest(suite).start()
        held = {}
        for suite, guest in guests.items():
            load_frelink(guest, modules[suite], "/root")
            guest.run("mkdir -p %s" % os.path.dirname(HELD))
            guest.run("setsid python3 /root/holder.py %s 65536 idle /root/held.json </dev/null >/dev/null 2>&1 &"
                      % HELD)
            held[suite] = json.loads(guest.run("for i in $(seq 100); do [ -e /root/held.json ] && break; sleep 0.1; "
                                               "done; cat /root/held.json").stdout)
            held[suite]["kernel"] = guest.run("uname -r").stdout.strip()
        inventory = _inventory(tmp / "inventory.ini", guests)
        runs = {}
        report = tmp / "audit"
        audit = ["-i", str(inventory), str(REPO / "playbooks" / "audit.yml"), "-e", "frelink_audit_dir=%s" % report]
        runs["audit"] = _ansible("ansible-playbook", audit, tmp)
        recover = ["-i", str(inventory), str(REPO / "playbooks" / "recover.yml"),
                   "-e", json.dumps({"frelink_recover_paths": [HELD]})]
        runs["recover"] = _ansible("ansible-playbook", recover, tmp)
        after = {}
        for suite, guest in guests.items():
            guest.run("kill -USR1 %d" % held[suite]["pid"])
            after[suite] = guest.run("for i in $(seq 50); do [ \"$(head -c 11 %(p)s)\" = LATER-WRITE ] && break; "
                                     "sleep 0.1; done; stat -c '%%d %%i %%h' %(p)s; head -c 11 %(p)s; echo"
                                     % {"p": HELD}, check=False).stdout.splitlines()
        runs["rerun"] = _ansible("ansible-playbook", recover, tmp)
        for module in ("frelink.frelink.frelink_facts", "ansible.builtin.ping"):
            runs[module] = _ansible("ansible", ["-i", str(inventory), "fleet:!%s" % UNREACHABLE, "-m", module], tmp)
        per_host = {module: runs[module]["cpu"] / len(guests)
                    for module in ("frelink.frelink.frelink_facts", "ansible.builtin.ping")}
        print("\n[fleet] controller CPU per host: %s" % ", ".join(
            "%s %.2f s" % (module.rsplit(".", 1)[1], seconds) for module, seconds in per_host.items()))
        yield {"held": held, "runs": runs, "report": report, "after": after, "cpu_per_host": per_host}
    finally:
        for guest in guests.values():
            guest.stop()


def test_three_kernels_in_one_inventory(fleet):
    kernels = [fleet["held"][suite]["kernel"] for suite in harness.SUITES]
    assert len(set(kernels)) == 3, kernels


def test_audit_reports_every_host_and_names_the_unreachable_one(fleet):
    run = fleet["runs"]["audit"]
    assert run["rc"] == 0, run["out"][-3000:]  # the audit goes on past an unreachable host
    data = json.loads((fleet["report"] / "audit.json").read_text())
    hosts = {host["name"]: host for host in data["hosts"]}
    assert sorted(hosts) == sorted(harness.SUITES + (UNREACHABLE,)), hosts
    assert hosts[UNREACHABLE]["status"] == "unreachable" and hosts[UNREACHABLE]["reason"], hosts[UNREACHABLE]
    assert data["totals"]["hosts"] == 4 and data["totals"]["hosts_failed"] == 1
    for suite, held in fleet["held"].items():
        assert hosts[suite]["status"] == "ok", hosts[suite]
        mine = [o for o in data["orphans"] if o["host"] == suite and o["path"] == HELD]
        assert len(mine) == 1, [o for o in data["orphans"] if o["host"] == suite]
        assert (mine[0]["ino"], mine[0]["kinds"]) == (held["ino"], ["fd"]), mine[0]
        assert any("[%d]" % held["pid"] in label for label in mine[0]["holders"]), mine[0]
    markdown = (fleet["report"] / "audit.md").read_text()
    assert "| %s | unreachable |" % UNREACHABLE in markdown


def test_recover_restores_on_every_reachable_host_in_one_run(fleet):
    out = fleet["runs"]["recover"]["out"]
    assert fleet["runs"]["recover"]["rc"] == 4, out[-3000:]  # 4: a host was unreachable
    assert recap(out, UNREACHABLE)["unreachable"] == 1
    assert len(re.findall(r"restored 1, unchanged 0, failed 0", out)) == len(harness.SUITES), out[-3000:]
    for suite, held in fleet["held"].items():
        counts = recap(out, suite)
        assert (counts["failed"], counts["unreachable"]) == (0, 0) and counts["changed"] >= 1, (suite, counts)
        stat, last = (fleet["after"][suite] + ["", ""])[:2]
        assert stat == "%d %d 1" % (held["dev"], held["ino"]), (suite, stat)
        assert last == "LATER-WRITE", (suite, last)  # the holder's write after the restore is in it


def test_a_rerun_changes_nothing(fleet):
    out = fleet["runs"]["rerun"]["out"]
    for suite in harness.SUITES:
        counts = recap(out, suite)
        assert (counts["changed"], counts["failed"]) == (0, 0), (suite, counts)


def test_facts_with_defaults_on_every_host(fleet):
    run = fleet["runs"]["frelink.frelink.frelink_facts"]
    assert run["rc"] == 0, run["out"][-3000:]
    for suite in harness.SUITES:
        assert re.search(r"^%s \| SUCCESS" % suite, run["out"], re.M), run["out"][-3000:]
