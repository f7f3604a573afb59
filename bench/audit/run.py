"""The fleet audit's report step at fleet scale, against Ansible's own floor in the same run.

Records one real frelink_facts result of this host with --orphans deleted-but-held files
(made here, held by one process), then runs playbooks/audit.yml on --hosts inventory
hosts with its scan task replaced by a set_fact of that recording (what the issue
measured), and the same play with only that set_fact (Ansible's floor: inventory, host
loop, the recorded result in every host's variables). The report step is the difference.
Prints wall time and the controller's peak RSS of both, and their ratio.

With --real-hosts N it also runs the unmodified audit.yml, real scans included, on N
inventory hosts (local connections to this host, so each scans it for real while the
files are held) in one play.

    python bench/audit/run.py [--hosts 1000] [--orphans 100] [--rounds 1] [--real-hosts 50]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"
sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import scan  # noqa: E402

HOLD = "import os, sys, time\nfds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]\nprint('ok', flush=True)\ntime.sleep(3600)\n"
SCAN_TASK = """    - name: Scan for deleted files that are still held
      frelink.frelink.frelink_facts:
        limit: 0  # the report lists every one
      register: frelink_audit_scan
      ignore_errors: true
      ignore_unreachable: true
"""
RECORDED_TASK = """    - name: The recorded scan (bench/audit/run.py)
      ansible.builtin.set_fact:
        frelink_audit_scan: "{{ frelink_bench_recording }}"
"""


def hold(work, orphans):
    """A process holding `orphans` files of work/, deleted."""
    paths = []
    for k in range(orphans):
        path = work / ("app-%03d.log" % k)
        path.write_bytes(b"x" * (4096 * (k % 7 + 1)))
        paths.append(str(path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD] + paths, stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    for path in paths:
        os.unlink(path)
    return holder


def record(work, orphans):
    """One real frelink_facts result (as registered) listing the `orphans` held deleted files."""
    facts = scan(include=[str(work) + "/*"], limit=0)
    assert facts["summary"]["count"] == orphans, facts["summary"]
    return {"changed": False, "ansible_facts": {"frelink": facts}}


def playbooks(work):
    """(audit.yml with the recorded scan, the floor play with only the recorded scan)."""
    text = (REPO / "playbooks" / "audit.yml").read_text()
    assert SCAN_TASK in text, "playbooks/audit.yml's scan task changed: update bench/audit/run.py"
    shutil.copytree(REPO / "playbooks" / "templates", work / "templates")
    audit = work / "audit.yml"
    audit.write_text(text.replace(SCAN_TASK, RECORDED_TASK))
    floor = work / "floor.yml"
    head = text[:text.index("  tasks:\n") + len("  tasks:\n")]
    floor.write_text(head + RECORDED_TASK)
    return audit, floor


def run(playbook, inventory, extra, work):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_DISPLAY_OK_HOSTS="false",
               ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    argv = ["/usr/bin/time", "-f", "%M", str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
            str(playbook), "-e", "@" + str(extra), "-e", "frelink_audit_dir=%s" % (work / "report")]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s\n%s" % (playbook.name, proc.stdout[-3000:], proc.stderr[-3000:]))
    rss_kib = int(proc.stderr.strip().splitlines()[-1])  # /usr/bin/time -f %M: the largest process
    return wall, rss_kib * 1024, proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--orphans", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--real-hosts", type=int, default=0, help="also audit.yml with real scans on N local hosts")
    args = parser.parse_args()
    if not shutil.which("/usr/bin/time"):
        raise SystemExit("bench/audit/run.py needs /usr/bin/time (Debian package time, installed by scripts/bootstrap.sh)")
    work = Path(tempfile.mkdtemp(prefix="frelink-bench-audit-"))
    held = work / "held"
    held.mkdir()
    holder = hold(held, args.orphans)
    try:
        recording = record(held, args.orphans)
        extra = work / "recording.json"
        extra.write_text(json.dumps({"frelink_bench_recording": recording}))
        audit, floor = playbooks(work)
        inventory = work / "hosts.ini"
        inventory.write_text("[all:vars]\nansible_connection=local\nansible_python_interpreter=%s\n[fleet]\n%s\n" % (
            sys.executable, "\n".join("host%04d" % n for n in range(args.hosts))))
        rows = []
        for _round in range(args.rounds):
            floor_wall, floor_rss = run(floor, inventory, extra, work)[:2]
            audit_wall, audit_rss = run(audit, inventory, extra, work)[:2]
            rows.append((floor_wall, floor_rss, audit_wall, audit_rss))
        report = json.loads((work / "report" / "audit.json").read_text())
        assert report["totals"]["hosts"] == args.hosts, report["totals"]
        assert report["totals"]["orphans"] == args.hosts * args.orphans, report["totals"]
        floor_wall, floor_rss, audit_wall, audit_rss = min(rows, key=lambda r: r[2])
        mib = 1 << 20
        print("audit.yml report step: %d hosts x %d orphans (%d rows), recorded facts, %d round(s), best shown"
              % (args.hosts, args.orphans, args.hosts * args.orphans, args.rounds))
        print("%-44s %10s %14s" % ("run", "wall s", "peak RSS MiB"))
        print("%-44s %10.1f %14.0f" % ("Ansible's floor: the recorded set_fact only", floor_wall, floor_rss / mib))
        print("%-44s %10.1f %14.0f" % ("audit.yml with the recorded scan", audit_wall, audit_rss / mib))
        print("report step (difference): %.1f s; audit.yml / floor: %.2fx wall, %.2fx memory; report files: %s"
              % (audit_wall - floor_wall, audit_wall / floor_wall, audit_rss / floor_rss,
                 ", ".join("%s %.1f MiB" % (p.name, p.stat().st_size / mib) for p in sorted((work / "report").iterdir()))))
        if args.real_hosts:
            real_inventory = work / "real.ini"
            real_inventory.write_text("[all:vars]\nansible_connection=local\nansible_python_interpreter=%s\n[fleet]\n%s\n"
                                      % (sys.executable, "\n".join("real%03d" % n for n in range(args.real_hosts))))
            shutil.rmtree(work / "report")
            wall, rss, _out = run(REPO / "playbooks" / "audit.yml", real_inventory, extra, work)
            report = json.loads((work / "report" / "audit.json").read_text())
            mine = [o for o in report["orphans"] if o["path"].startswith(str(held) + "/")]
            assert report["totals"]["hosts"] == args.real_hosts and report["totals"]["hosts_failed"] == 0
            assert len(mine) == args.real_hosts * args.orphans, len(mine)
            print("audit.yml, unmodified, real scans: %d hosts (local connections to this host) in one play: %.1f s, "
                  "peak RSS %.0f MiB; %d orphans listed, %d of them the held files"
                  % (args.real_hosts, wall, rss / mib, report["totals"]["orphans"], len(mine)))
    finally:
        holder.kill()
        holder.wait()
        if os.environ.get("FRELINK_BENCH_KEEP"):
            print("kept: %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
