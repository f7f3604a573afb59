# -*- coding: utf-8 -*-
"""Benchmark of frelink_facts against `lsof +L1` and a C floor, on one large real workload.

Measured in the same run, on the same processes (median of --repeat runs, wall and CPU):
- scan():   the module's scanner in-process, default options (limit 1000) and limit=0
- lsof:     `lsof -nP +L1`
- floor:    bench/facts/floor.c (compiled now with the host's gcc): readdir + readlink of
            every /proc/PID/fd entry, nothing else
Recall and precision of each against the workload's ground truth (only the workload's
processes and loop devices count).  Then end to end on a smaller workload:
`ansible localhost -m frelink.frelink.frelink_facts` minus `ansible localhost -m ping`,
against `lsof -nP +L1`.  Needs root, gcc, lsof, losetup.  Prints a table; --json FILE too.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from workload import Workload  # noqa: E402

COLLECTIONS = REPO / ".build" / "collections"
_LINK = COLLECTIONS / "ansible_collections" / "frelink" / "frelink"
if not _LINK.exists():
    _LINK.parent.mkdir(parents=True, exist_ok=True)
    _LINK.symlink_to(REPO)
sys.path.insert(0, str(COLLECTIONS))
from ansible_collections.frelink.frelink.plugins.module_utils.scan import scan  # noqa: E402


def run_cmd(argv, env=None):
    """(wall seconds, CPU seconds of the child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):  # lsof exits 1 when it lists nothing
        raise RuntimeError("%s failed (%d): %s" % (argv[0], proc.returncode, proc.stderr[-2000:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def run_scan(**options):
    start, cpu0 = time.perf_counter(), time.process_time()
    facts = scan(**options)
    return time.perf_counter() - start, time.process_time() - cpu0, facts


def count_values(value):
    """Containers and scalars in a result: Ansible's handling costs time for each."""
    if isinstance(value, dict):
        return 1 + sum(count_values(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(count_values(item) for item in value)
    return 1


def median_runs(fn, repeat):
    runs = [fn() for _round in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2]


def score(found, truth):
    hits = len(found & truth)
    recall = hits / len(truth) if truth else 1.0
    precision = hits / len(found) if found else 1.0
    return recall, precision


def scan_found(facts, workload):
    pids, loops = set(workload.pids), set(workload.loop_devices)
    return {(o["dev"], o["ino"]) for o in facts["orphans"]
            if any(h.get("pid") in pids or h.get("device") in loops for h in o["holders"])}


def lsof_found(output, workload):
    """(dev, ino) of the workload's files in `lsof -F pDi` output."""
    pids = set(workload.pids)
    found, pid, dev = set(), None, None
    for line in output.splitlines():
        tag, value = line[:1], line[1:]
        if tag == "p":
            pid = int(value)
        elif tag == "f":
            dev = None
        elif tag == "D":
            dev = int(value, 16)
        elif tag == "i" and pid in pids and dev is not None:
            found.add((dev, int(value)))
    return found


def floor_found(output, workload):
    """Paths (' (deleted)' stripped) the floor printed for the workload's processes."""
    pids = {str(pid) for pid in workload.pids}
    return {line.split("\t", 2)[2] for line in output.splitlines() if line.split("\t", 1)[0] in pids}


def compile_floor(tmp):
    binary = os.path.join(tmp, "floor")
    subprocess.run(["gcc", "-O2", "-o", binary, str(HERE / "floor.c")], check=True)
    return binary


def measure_inprocess(args, floor):
    print("building workload: %d processes x %d fds, %d loop devices ..." % (args.procs, args.fds, args.loops),
          file=sys.stderr, flush=True)
    with Workload(args.procs, args.fds, loops=args.loops) as workload:
        truth = set(workload.truth)
        truth_paths = {path for _kind, path in workload.truth.values()}
        fd_truth = {k for k, (kind, _path) in workload.truth.items() if kind == "fd"}
        run_cmd([floor])  # warm-up: /proc dentries for every fd exist from now on
        results = {}
        results["floor"] = median_runs(lambda: run_cmd([floor, "-p"]), args.repeat)
        results["scan"] = median_runs(run_scan, args.repeat)
        results["scan_all"] = median_runs(lambda: run_scan(limit=0), args.repeat)
        results["scan_fd"] = median_runs(lambda: run_scan(limit=0, kinds=["fd"]), args.repeat)
        results["lsof"] = median_runs(lambda: run_cmd(["lsof", "-nP", "+L1"]), args.repeat)
        lsof_parse = run_cmd(["lsof", "-nP", "+L1", "-F", "pfDi"])[2]
        scores = {
            "scan_all": score(scan_found(results["scan_all"][2], workload), truth),
            "scan_fd": score(scan_found(results["scan_fd"][2], workload), fd_truth),
            "lsof": score(lsof_found(lsof_parse, workload), truth),
            "floor": score(floor_found(results["floor"][2], workload), truth_paths),
        }
        facts = results["scan_all"][2]
        info = {
            "processes": args.procs, "fds_per_process": args.fds, "fds_scanned": facts["scan"]["fds"],
            "truth": {kind: sum(1 for k, _p in workload.truth.values() if k == kind) for kind in ("fd", "mmap", "loop")},
        }
    return results, scores, info


def measure_e2e(args, inherited=False):
    ansible_bin = Path(sys.executable).parent
    ansible = str(ansible_bin / "ansible") if (ansible_bin / "ansible").exists() else shutil.which("ansible")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    print("building workload: %d processes x %d fds%s ..." % (args.e2e_procs, args.e2e_fds,
          ", deleted files inherited" if inherited else ""), file=sys.stderr, flush=True)
    with Workload(args.e2e_procs, args.e2e_fds, inherited=inherited) as workload:
        run_cmd(["lsof", "-nP", "+L1"])  # warm-up
        module = [ansible, "localhost", "-m", "frelink.frelink.frelink_facts"]
        runs = {"facts": [], "facts_limit_100": [], "ping": [], "lsof": [], "scan_in_process": []}
        # interleaved, so that load from elsewhere hits every command alike
        for _round in range(args.e2e_repeat):
            runs["ping"].append(run_cmd([ansible, "localhost", "-m", "ping"], env))
            runs["facts"].append(run_cmd(module, env))
            runs["facts_limit_100"].append(run_cmd(module + ["-a", "limit=100"], env))
            runs["lsof"].append(run_cmd(["lsof", "-nP", "+L1"]))
            runs["scan_in_process"].append(run_scan())
        payload = len(json.dumps(runs["scan_in_process"][-1][2], separators=(",", ":")))
        values = count_values(runs["scan_in_process"][-1][2])
        orphans = len(workload.truth)
    result = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
              for name, rs in runs.items()}
    result.update(payload_bytes=payload, payload_values=values, orphans=orphans, inherited=inherited)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2000)
    parser.add_argument("--fds", type=int, default=50)
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--e2e-procs", type=int, default=500)
    parser.add_argument("--e2e-fds", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--e2e-repeat", type=int, default=5)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/facts needs root (loop devices, /proc/PID/map_files)")
    with tempfile.TemporaryDirectory(prefix="frelink-floor-") as tmp:
        floor = compile_floor(tmp)
        results, scores, info = measure_inprocess(args, floor)
    e2es = [] if args.skip_e2e else [measure_e2e(args), measure_e2e(args, inherited=True)]

    scan_wall = results["scan"][0]
    rows = [
        ("frelink scan() default (limit 1000)", results["scan"], scores["scan_all"]),
        ("frelink scan() limit=0 (all listed)", results["scan_all"], scores["scan_all"]),
        ("frelink scan() kinds=[fd] limit=0", results["scan_fd"], scores["scan_fd"]),
        ("lsof -nP +L1", results["lsof"], scores["lsof"]),
        ("C floor (readlink every fd)", results["floor"], scores["floor"]),
    ]
    print()
    print("workload: %(processes)d processes x %(fds_per_process)d fds = %(fds_scanned)d fds scanned; " % info
          + "orphans: %(fd)d fd-held, %(mmap)d mapped-only, %(loop)d loop-only" % info["truth"])
    print("%-38s %9s %9s %10s %8s %9s" % ("tool", "wall s", "CPU s", "wall/scan", "recall", "precision"))
    for name, (wall, cpu, _out), (recall, precision) in rows:
        print("%-38s %9.3f %9.3f %10.2f %7.1f%% %8.1f%%" % (name, wall, cpu, wall / scan_wall, recall * 100,
                                                            precision * 100))
    print("(the default rows list 1000 orphans and count all: their recall is that of the same scan with"
          " limit=0;\n scan() kinds=[fd] is scored against fd-held orphans only)")
    scan_cpu = results["scan"][1]
    ratios = {
        "lsof_over_scan_wall": results["lsof"][0] / scan_wall,
        "lsof_over_scan_cpu": results["lsof"][1] / scan_cpu,
        "scan_over_floor_wall": scan_wall / results["floor"][0],
        "scan_over_floor_cpu": scan_cpu / results["floor"][1],
        "scan_fd_over_floor_wall": results["scan_fd"][0] / results["floor"][0],
        "scan_fd_over_floor_cpu": results["scan_fd"][1] / results["floor"][1],
    }
    print("ratios (wall / CPU):")
    print("  lsof / scan()           = %5.2fx / %5.2fx  (target >= 4)"
          % (ratios["lsof_over_scan_wall"], ratios["lsof_over_scan_cpu"]))
    print("  scan() / C floor        = %5.2fx / %5.2fx  (target <= 1.3; the floor reads fd links only)"
          % (ratios["scan_over_floor_wall"], ratios["scan_over_floor_cpu"]))
    print("  scan(kinds=fd) / floor  = %5.2fx / %5.2fx  (the floor's work + stat of every candidate)"
          % (ratios["scan_fd_over_floor_wall"], ratios["scan_fd_over_floor_cpu"]))
    for e2e in e2es:
        suffix = "_inherited" if e2e["inherited"] else ""
        net = e2e["facts"][0] - e2e["ping"][0]
        net_cpu = e2e["facts"][1] - e2e["ping"][1]
        net_100 = e2e["facts_limit_100"][0] - e2e["ping"][0]
        net_100_cpu = e2e["facts_limit_100"][1] - e2e["ping"][1]
        ratios["lsof_over_e2e_wall" + suffix] = e2e["lsof"][0] / net if net > 0 else float("inf")
        ratios["lsof_over_e2e_cpu" + suffix] = e2e["lsof"][1] / net_cpu if net_cpu > 0 else float("inf")
        print()
        print("end to end, %d processes x %d fds, %d orphans (%s); medians of %d interleaved rounds"
              % (args.e2e_procs, args.e2e_fds, e2e["orphans"],
                 "deleted files inherited by every process" if e2e["inherited"] else "every process its own files",
                 args.e2e_repeat))
        print("%-52s %9s %9s" % ("", "wall s", "CPU s"))
        for label, key in (("ansible -m frelink.frelink.frelink_facts", "facts"),
                           ("ansible -m frelink.frelink.frelink_facts -a limit=100", "facts_limit_100"),
                           ("ansible -m ping", "ping"), ("lsof -nP +L1", "lsof"),
                           ("scan() in-process (default options)", "scan_in_process")):
            print("%-52s %9.3f %9.3f" % (label, e2e[key][0], e2e[key][1]))
        print("facts JSON with default options (limit 1000): %d bytes, %d values"
              % (e2e["payload_bytes"], e2e["payload_values"]))
        print("  lsof / (facts - ping)           = %5.2fx / %5.2fx  (wall / CPU; target >= 2)"
              % (ratios["lsof_over_e2e_wall" + suffix], ratios["lsof_over_e2e_cpu" + suffix]))
        print("  lsof / (facts limit=100 - ping) = %5.2fx / %5.2fx"
              % (e2e["lsof"][0] / net_100 if net_100 > 0 else float("inf"),
                 e2e["lsof"][1] / net_100_cpu if net_100_cpu > 0 else float("inf")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "ratios": ratios, "e2e": e2es,
                       "results": {k: v[:2] for k, v in results.items()}, "scores": scores}, f, indent=1)


if __name__ == "__main__":
    main()
