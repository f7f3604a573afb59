"""`make demo`: frelink end to end on a Debian bookworm VM.

Boots the VM (building its image on the first run), deploys the kernel module
with the role, starts a process that keeps writing a "precious" log file,
deletes the file, shows frelink_facts finding it, gives it its name back with
playbooks/recover.yml, shows the restored file still growing with the
process's writes, unloads the module and stops the VM.

Exits non-zero on any failure.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import harness  # noqa: E402  (needs the path above)

SUITE = "bookworm"
DEMO_DIR = "/srv/demo"
PRECIOUS = DEMO_DIR + "/precious.log"
STAGES = 10
WRITER = r"""
import datetime, os, sys, time
log = open(sys.argv[1], "a", buffering=1)
n = 0
while True:
    log.write("%s entry %d: the data you cannot lose\n" % (datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3], n))
    n += 1
    time.sleep(0.25)
"""

_stage = 0
_started = time.monotonic()


def stage(text):
    global _stage
    _stage += 1
    print("\n[%d/%d %5.0fs] %s" % (_stage, STAGES, time.monotonic() - _started, text), flush=True)


def show(text):
    for line in text.rstrip("\n").splitlines():
        print("    " + line, flush=True)


def ansible_env():
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build" / "collections"))
    env.update(ANSIBLE_PIPELINING="1", ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="False")
    return env


def ansible(argv, what):
    """Run an ansible command; on failure print its output and stop the demo."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(), check=False)
    if proc.returncode != 0:
        show(proc.stdout + proc.stderr)
        raise SystemExit("demo: %s failed (exit %d)" % (what, proc.returncode))
    return proc.stdout


def playbook(inventory, path, what, extra_vars=None):
    argv = ["ansible-playbook", "-i", str(inventory), str(path)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    out = ansible(argv, what)
    recap = [line for line in out.splitlines() if line.startswith("guest ")]
    show("ansible-playbook %s: %s" % (Path(path).name, " ".join(recap[-1].split()[2:6]) if recap else "done"))
    return out


def role(inventory, workdir, state):
    path = Path(workdir) / ("role-%s.yml" % state)
    path.write_text("- name: frelink_kmod %s\n  hosts: all\n  gather_facts: false\n"
                    "  roles:\n    - role: frelink.frelink.frelink_kmod\n"
                    "      frelink_kmod_state: %s\n" % (state, state))
    return playbook(inventory, path, "the role frelink_kmod (state=%s)" % state)


def facts(inventory):
    out = ansible(["ansible", "-i", str(inventory), "guest", "-m", "frelink.frelink.frelink_facts",
                   "-a", json.dumps({"include": [DEMO_DIR + "/*"]})], "frelink_facts")
    # minimal/default ad-hoc output: "guest | SUCCESS => {json}"
    result, _end = json.JSONDecoder().raw_decode(out[out.index("=>") + 2:].lstrip())
    return result["ansible_facts"]["frelink"]


def main():
    stage("Preparing the Debian %s image (first run: downloads Debian packages and builds it, "
          "a few minutes; later runs reuse %s)" % (SUITE, harness.util.cache_root()))
    env = harness.prepare(SUITE)
    show("kernel %s" % env.kernel_release)

    stage("Booting the VM in QEMU")
    with harness.Guest(SUITE) as guest, tempfile.TemporaryDirectory(prefix="frelink-demo-") as workdir:
        inventory = guest.inventory_path()
        show("ssh -i %s -p %s root@127.0.0.1   (%s)" % (
            guest.ssh_key, guest.ssh_port, guest.run("uname -sr").stdout.strip()))

        stage("Deploying the frelink kernel module with the role frelink.frelink.frelink_kmod (DKMS build in the VM)")
        role(inventory, workdir, "present")
        show(guest.run("ls -l /dev/frelink; lsmod | grep ^frelink").stdout)

        stage("Starting a process that keeps writing %s" % PRECIOUS)
        guest.run("mkdir -p %s" % DEMO_DIR)
        guest.run("setsid python3 -c %s %s >/dev/null 2>&1 < /dev/null & echo $! > %s/writer.pid; sleep 2"
                  % (shlex.quote(WRITER), PRECIOUS, DEMO_DIR))
        show(guest.run("ls -li %s; tail -n 2 %s" % (PRECIOUS, PRECIOUS)).stdout)

        stage("Deleting it (the process keeps writing into the deleted file)")
        guest.run("rm %s" % PRECIOUS)
        show(guest.run("ls %s 2>&1; ls -l /proc/$(cat %s/writer.pid)/fd | grep precious"
                       % (PRECIOUS, DEMO_DIR), check=False).stdout)

        stage("frelink_facts finds the deleted file and what holds it")
        found = [o for o in facts(inventory)["orphans"] if o["path"] == PRECIOUS]
        if not found:
            raise SystemExit("demo: frelink_facts did not report %s" % PRECIOUS)
        orphan = found[0]
        holders = ", ".join("%s %s[%s] fd %s" % (h["kind"], h.get("name"), h.get("pid"), h.get("fd"))
                            for h in orphan["holders"])
        show("%s: %d bytes, inode %d on %s (%s), held by %s; relink possible: %s"
             % (orphan["path"], orphan["size"], orphan["ino"], orphan["mount_point"], orphan["fstype"],
                holders, orphan["restore"]["relink"]))

        stage("The fleet audit (playbooks/audit.yml): what is at risk, and what a restart would free")
        report = Path(workdir) / "audit"
        playbook(inventory, REPO / "playbooks" / "audit.yml", "audit.yml", {"frelink_audit_dir": str(report)})
        audit = json.loads((report / "audit.json").read_text())
        totals = audit["totals"]
        show("%d file(s) at risk (%s), %d replaced (restart needed), %d deliberate; report: %s"
             % (totals["orphans"], totals["allocated_human"], totals["replaced"], totals["deliberate"],
                report / "index.html"))
        for row in audit["restart"]:
            show("%-55s frees %d file(s), %s%s" % ("; ".join(t["action"] for t in row["targets"]), row["orphans"],
                                                   row["allocated_human"],
                                                   "  <- restore first" if row["loses_data"] else ""))
        if not [o for o in audit["orphans"] if o["path"] == PRECIOUS]:
            raise SystemExit("demo: the audit does not show %s at risk" % PRECIOUS)

        stage("Recovering it with playbooks/recover.yml")
        playbook(inventory, REPO / "playbooks" / "recover.yml", "recover.yml",
                 {"frelink_recover_paths": [PRECIOUS]})
        restored_at = guest.run("date +%H:%M:%S.%N | cut -c1-12").stdout.strip()
        first = guest.run("stat -c '%%i %%h %%s' %s" % PRECIOUS).stdout.split()
        time.sleep(2)
        second = guest.run("stat -c '%%i %%h %%s' %s" % PRECIOUS).stdout.split()
        show(guest.run("ls -li %s; head -n 1 %s; echo ...; tail -n 3 %s"
                       % (PRECIOUS, PRECIOUS, PRECIOUS)).stdout)
        inode, links, size_after, size_later = int(first[0]), int(first[1]), int(first[2]), int(second[2])
        if inode != orphan["ino"] or links != 1:
            raise SystemExit("demo: %s is inode %d with %d links, expected the held inode %d"
                             % (PRECIOUS, inode, links, orphan["ino"]))
        if size_later <= size_after:
            raise SystemExit("demo: the restored file did not grow (%d then %d bytes)" % (size_after, size_later))
        show("restored at %s as the same inode %d; still written to: %d -> %d bytes in 2 s"
             % (restored_at, inode, size_after, size_later))

        stage("Stopping the writer and unloading the module (role state=absent)")
        guest.run("kill $(cat %s/writer.pid)" % DEMO_DIR)
        role(inventory, workdir, "absent")
        left = guest.run("grep -c '^frelink ' /proc/modules; ls /dev/frelink 2>/dev/null",
                         check=False).stdout.split()
        if left != ["0"]:
            raise SystemExit("demo: the module is still loaded after state=absent (%s)" % " ".join(left))
        show("module unloaded: frelink is not in /proc/modules and /dev/frelink is gone")

        stage("Stopping the VM")
    print("\ndemo: done in %.0f s: the deleted file is back, with the writes made after it was deleted."
          % (time.monotonic() - _started), flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise SystemExit("demo: interrupted")
    except Exception as error:  # noqa: BLE001 - one readable line, then the exit code
        raise SystemExit("demo: failed at stage %d: %s: %s" % (_stage, type(error).__name__, error))
