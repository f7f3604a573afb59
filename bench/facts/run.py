# -*- coding: utf-8 -*-
"""Benchmark of frelink_facts against lsof, lsfd and two C floors, on one real workload.

One workload (bench/facts/workload.py: forked processes holding their own deleted
files, mapped-only deleted files, decoys, deleted images on loop devices when root
can attach them), then N interleaved rounds (the order rotates each round) of:

- frelink scan() in-process reading /proc, default options (limit 100), and limit=0 (all listed)
- with the frelink module loaded (bench/facts/guest.py runs this in a guest that has it), the
  same two with the kernel's listing (FRELINK_IOC_HELD, backend="kernel")
- lsof -nP +L1
- lsfd -n -Q DELETED                   (util-linux)
- C fd-only floor (floor.c):           readdir + readlinkat of every /proc/PID/fd entry
- C complete floor (floor_complete.c): the fd floor + fstatat of the ' (deleted)'
  candidates, readlinkat/fstatat of exe, cwd, root, every /proc/PID/maps read whole
  with one stat through map_files per deleted mapping, LOOP_GET_STATUS64 of loop
  devices whose backing file was deleted
- the same complete floor with -q: the file-backed mappings walked with the PROCMAP_QUERY
  ioctl (Linux 6.11+) without names, one stat per (device, inode) of the whole scan, names
  only for deleted ones (on older kernels it reads the maps text like the row above)
- end to end: ansible localhost -m frelink.frelink.frelink_facts (defaults),
  ansible localhost -m command -a 'lsof -nP +L1', ansible localhost -m ping

Both C programs are compiled with the host's gcc into a temporary directory.
Recall and precision of every tool are computed from the output of each of its
timed runs against the workload's ground truth (only the workload's processes and
loop devices count) and the worst round is shown.  Times are the minimum of the N
rounds (wall; CPU of that tool's process and children).  Ratios are against the
complete floor and against lsof.

    bench/facts/run.py                 500 processes x 40 fds, 2 loop devices, 5 rounds
    bench/facts/run.py --big           2000 processes x 50 fds, 4 loop devices (issue #12)
    bench/facts/run.py --big --profile profile.txt   + cProfile of scan() (default options)
    bench/facts/guest.py --big         the same in a Debian guest with the module loaded

Needs root (loop devices, /proc/PID/map_files), gcc, lsof, lsfd, losetup, ansible.
--json FILE writes every figure.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import resource
import shutil
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
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scan_mod  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import scan  # noqa: E402

SMALL = {"procs": 500, "fds": 40, "loops": 2}
BIG = {"procs": 2000, "fds": 50, "loops": 4}


# -- running and timing ------------------------------------------------------

def run_cmd(argv, env=None, ok=(0, 1)):
    """(wall seconds, CPU seconds of the child and its children, stdout).  ok: accepted exit codes
    (lsof exits 1 when it lists nothing; ansible must exit 0)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, check=False,
                          errors="surrogateescape")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stderr[-2000:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def run_scan(**options):
    start, cpu0 = time.perf_counter(), time.process_time()
    facts = scan(**options)
    return time.perf_counter() - start, time.process_time() - cpu0, facts


def run_listing():
    """The kernel's listing by itself: what scan() starts from before any Python per orphan."""
    start, cpu0 = time.perf_counter(), time.process_time()
    chunks = kmod_abi.list_held_raw()[0]
    return time.perf_counter() - start, time.process_time() - cpu0, chunks


def count_values(value):
    """Containers and scalars in a result: Ansible's handling costs time for each."""
    if isinstance(value, dict):
        return 1 + sum(count_values(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(count_values(item) for item in value)
    return 1


# -- scoring -----------------------------------------------------------------

def score(found, truth):
    hits = len(found & truth)
    recall = hits / len(truth) if truth else 1.0
    precision = hits / len(found) if found else 1.0
    return recall, precision


def scan_found(facts, workload):
    """(dev, ino) of the listed orphans a workload process or loop device holds."""
    pids, loops = set(workload.pids), set(workload.loop_devices)
    return {(o["dev"], o["ino"]) for o in facts["orphans"]
            if any(h.get("pid") in pids or h.get("device") in loops for h in o["holders"])}


def lsof_found(output, workload):
    """(dev, ino) of the workload's files in `lsof -F pfDi` output."""
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


# COMMAND PID USER FD TYPE DEVICE SIZE/OFF NLINK NODE NAME (COMMAND may hold spaces)
_LSOF_LINE = re.compile(r"^.*?\s(\d+)\s+\S+\s+\S+\s+\S+\s+(\d+),(\d+)\s+\S+\s+\d+\s+(\d+)\s")


def lsof_text_found(output, workload):
    """(dev, ino) of the workload's files in the default output of `lsof -nP +L1`."""
    pids = set(workload.pids)
    found = set()
    for line in output.splitlines()[1:]:
        match = _LSOF_LINE.match(line)
        if match and int(match.group(1)) in pids:
            found.add((os.makedev(int(match.group(2)), int(match.group(3))), int(match.group(4))))
    return found


def mount_devices(mountinfo="/proc/self/mountinfo"):
    """mount id -> st_dev, from mountinfo (lsfd prints the mount id, not the device)."""
    devices = {}
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            major, minor = fields[2].split(":")
            devices[int(fields[0])] = os.makedev(int(major), int(minor))
    return devices


# COMMAND PID USER ASSOC MODE TYPE SOURCE MNTID INODE NAME (COMMAND may hold spaces)
_LSFD_LINE = re.compile(r"^\s*.*?\s(\d+)\s+\S+\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(\d+)\s+(\d+)\s")


def lsfd_found(output, workload, devices):
    """(dev, ino) of the workload's files in the default output of `lsfd -n -Q DELETED`.

    Files of a mount that is not in our mountinfo (mount id 0: memfd and other
    kernel-internal mounts) get dev None: they are reported, so they count."""
    pids = set(workload.pids)
    found = set()
    for line in output.splitlines():
        match = _LSFD_LINE.match(line)
        if match and int(match.group(1)) in pids:
            found.add((devices.get(int(match.group(3))), int(match.group(4))))
    return found


def floor_found(output, workload):
    """Paths (' (deleted)' stripped) the fd-only floor printed for the workload's processes."""
    pids = {str(pid) for pid in workload.pids}
    return {line.split("\t", 2)[2] for line in output.splitlines() if line.split("\t", 1)[0] in pids}


def complete_floor_found(output, workload):
    """(dev, ino) the complete floor printed for the workload's processes and loop devices."""
    holders = {str(pid) for pid in workload.pids} | set(workload.loop_devices)
    found = set()
    for line in output.splitlines():
        _kind, who, dev, ino = line.split("\t")
        if who in holders:
            found.add((int(dev), int(ino)))
    return found


# -- the C floors --------------------------------------------------------------

def compile_floor(tmp, source="floor.c"):
    binary = os.path.join(tmp, Path(source).stem)
    subprocess.run(["gcc", "-O2", "-o", binary, str(HERE / source)], check=True)
    return binary


def compile_floors(tmp, prebuilt=None):
    """The two floor programs: compiled here, or taken from PREBUILT (a directory with floor and
    floor_complete, built for this system elsewhere: a guest without gcc)."""
    if prebuilt:
        return {"fd": os.path.join(prebuilt, "floor"), "complete": os.path.join(prebuilt, "floor_complete")}
    return {"fd": compile_floor(tmp, "floor.c"), "complete": compile_floor(tmp, "floor_complete.c")}


# -- the benchmark -------------------------------------------------------------

def loops_possible():
    """Loop devices can be attached (root, loop driver, losetup)."""
    return os.geteuid() == 0 and os.path.exists("/dev/loop-control") and shutil.which("losetup") is not None


def ansible_env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
                ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")


def ansible_binary():
    here = Path(sys.executable).parent / "ansible"
    return str(here) if here.exists() else shutil.which("ansible")


def tools(floors, e2e=True):
    """name -> (label, function returning (wall, cpu, output))."""
    table = {
        "scan": ("frelink scan() default (limit %d), /proc" % scan_mod.DEFAULT_LIMIT,
                 lambda: run_scan(backend="proc")),
        "scan_all": ("frelink scan() limit=0 (all listed), /proc", lambda: run_scan(limit=0, backend="proc")),
    }
    if kmod_abi.module_loaded():
        table.update({
            "kscan": ("frelink scan() default, kernel listing", lambda: run_scan(backend="kernel")),
            "kscan_all": ("frelink scan() limit=0, kernel listing", lambda: run_scan(limit=0, backend="kernel")),
            "kheld": ("FRELINK_IOC_HELD alone (records, no facts)", run_listing),
        })
    table.update({
        "lsof": ("lsof -nP +L1", lambda: run_cmd(["lsof", "-nP", "+L1"])),
        "lsfd": ("lsfd -n -Q DELETED", lambda: run_cmd(["lsfd", "-n", "-Q", "DELETED"])),
        "floor_fd": ("C fd-only floor (readlink every fd)", lambda: run_cmd([floors["fd"], "-p"])),
        "floor": ("C complete floor", lambda: run_cmd([floors["complete"], "-p"])),
        "floor_query": ("C complete floor, maps by PROCMAP_QUERY", lambda: run_cmd([floors["complete"], "-p", "-q"])),
    })
    if e2e:
        ansible, env = ansible_binary(), ansible_env()

        def adhoc(*args):
            return lambda: run_cmd([ansible, "localhost"] + list(args), env, ok=(0,))
        table.update({
            "e2e_facts": ("ansible -m frelink.frelink.frelink_facts", adhoc("-m", "frelink.frelink.frelink_facts")),
            "e2e_lsof": ("ansible -m command -a 'lsof -nP +L1'", adhoc("-m", "command", "-a", "lsof -nP +L1")),
            "e2e_ping": ("ansible -m ping", adhoc("-m", "ping")),
        })
    return table


def scorers(workload):
    """name -> (truth, function output -> found set): what each tool is scored on."""
    truth = set(workload.truth)
    paths = {path for _kind, path in workload.truth.values()}
    devices = mount_devices()
    return {
        "scan_all": (truth, lambda facts: scan_found(facts, workload)),
        "kscan_all": (truth, lambda facts: scan_found(facts, workload)),
        "lsof": (truth, lambda out: lsof_text_found(out, workload)),
        "lsfd": (truth, lambda out: lsfd_found(out, workload, devices)),
        "floor_fd": (paths, lambda out: floor_found(out, workload)),
        "floor": (truth, lambda out: complete_floor_found(out, workload)),
        "floor_query": (truth, lambda out: complete_floor_found(out, workload)),
    }


def profile_scan(top=25):
    """cProfile of one scan() with default options: (text of the top entries, wall seconds)."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    scan()
    profiler.disable()
    wall = time.perf_counter() - start
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue(), wall


def measure(procs, fds, loops, rounds, floors, e2e=True, profile=None, log=None):
    """Build the workload, run every tool `rounds` times interleaved; return the figures (a dict)."""
    log = log or sys.stderr
    if loops and not loops_possible():
        print("loop devices cannot be attached here: the workload has none", file=log)
        loops = 0
    print("building workload: %d processes x %d fds, %d loop devices ..." % (procs, fds, loops), file=log, flush=True)
    table = tools(floors, e2e)
    with Workload(procs, fds, loops=loops) as workload:
        score_on = scorers(workload)
        run_cmd([floors["fd"]])  # warm-up: /proc dentries for every fd exist from now on
        baseline = run_scan(limit=0)[2]  # what the host holds besides the workload
        names = list(table)
        runs = {name: [] for name in names}
        worst = {}
        defaults = {}
        for rnd in range(rounds):
            print("round %d of %d ..." % (rnd + 1, rounds), file=log, flush=True)
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                wall, cpu, out = table[name][1]()
                runs[name].append((wall, cpu))
                if name in score_on:
                    truth, found = score_on[name]
                    result = score(found(out), truth)
                    old = worst.get(name, (1.0, 1.0))
                    worst[name] = (min(old[0], result[0]), min(old[1], result[1]))
                if name in ("scan", "kscan"):
                    defaults[name] = out
                if name == "e2e_facts":
                    e2e_stdout = out
        # The default listing is cut at DEFAULT_LIMIT by design: it is scored on what it lists
        # (precision) and on its summary count (every orphan counted, listed or not). The count
        # is read from a default scan limited to the workload's directory: a busy host's own
        # orphans (a compiler's temporary files, say) come and go between any two scans.
        facts = defaults["scan"]
        outside = len(baseline["orphans"]) - len(scan_found(baseline, workload))
        for name, listing in defaults.items():
            backend = "kernel" if name == "kscan" else "proc"
            counted = run_scan(include=[os.path.join(workload.workdir, "*")], backend=backend)[2]["summary"]["count"]
            worst[name] = (min(counted, len(workload.truth)) / len(workload.truth) if workload.truth else 1.0,
                           score(scan_found(listing, workload), set(workload.truth))[1])
        info = {
            "processes": procs, "fds_per_process": fds, "loops": loops, "rounds": rounds,
            "fds_scanned": facts["scan"]["fds"], "orphans": len(workload.truth),
            "truth": {kind: sum(1 for k, _p in workload.truth.values() if k == kind) for kind in ("fd", "mmap", "loop")},
            "host_orphans_outside_workload": outside, "workload_count": counted,
            "default_listed": facts["summary"]["listed"], "default_count": facts["summary"]["count"],
            "facts_json_bytes": len(json.dumps(facts, separators=(",", ":"))),
            "facts_values": count_values(facts),
            "e2e_facts_stdout_bytes": len(e2e_stdout.encode("utf-8", "surrogateescape")) if e2e else None,
        }
        profiled = profile_scan() if profile else None
    figures = {name: {"label": table[name][0], "min_wall": min(w for w, _c in rs), "min_cpu": min(c for _w, c in rs),
                      "walls": [w for w, _c in rs], "cpus": [c for _w, c in rs]}
               for name, rs in runs.items()}
    for name, (recall, precision) in worst.items():
        figures[name]["recall"], figures[name]["precision"] = recall, precision
    return {"info": info, "figures": figures, "profile": profiled}


def report(result, out=None):
    out = out or sys.stdout
    info, fig = result["info"], result["figures"]
    floor, lsof = fig["floor"], fig["lsof"]
    print(file=out)
    print("workload: %(processes)d processes x %(fds_per_process)d fds = %(fds_scanned)d fds scanned, "
          "%(loops)d loop devices; " % info
          + "orphans: %(fd)d fd-held, %(mmap)d mapped-only, %(loop)d loop-only" % info["truth"]
          + "; min of %d interleaved rounds" % info["rounds"], file=out)
    print("%-42s %8s %8s %9s %8s %8s %9s" % ("tool", "wall s", "CPU s", "/complete", "/lsof", "recall", "precision"),
          file=out)
    for name, row in fig.items():
        if name == "e2e_facts":
            print("end to end (controller and managed node are this host):", file=out)
        recall = "%7.1f%%" % (row["recall"] * 100) if "recall" in row else "%8s" % "-"
        precision = "%8.1f%%" % (row["precision"] * 100) if "precision" in row else "%9s" % "-"
        print("%-42s %8.3f %8.3f %8.2fx %7.2fx %s %s" % (
            row["label"], row["min_wall"], row["min_cpu"], row["min_wall"] / floor["min_wall"],
            row["min_wall"] / lsof["min_wall"], recall, precision), file=out)
    print("(recall and precision: the worst of the rounds. The default scan lists %d of the %d orphans it counts"
          " (limit %d): its recall is the summary count of the same scan limited to the workload's directory (%d; the"
          " host held %d orphans outside the workload at the start),"
          " its precision that of what it lists. The fd-only floor is scored on paths, every other tool on"
          " (dev, ino).)" % (info["default_listed"], info["default_count"], scan_mod.DEFAULT_LIMIT,
                             info["workload_count"], info["host_orphans_outside_workload"]), file=out)
    print("default facts: %.1f KB of JSON (%d values)%s" % (
        info["facts_json_bytes"] / 1000.0, info["facts_values"],
        "; ansible's stdout for it %.1f KB" % (info["e2e_facts_stdout_bytes"] / 1000.0)
        if info["e2e_facts_stdout_bytes"] is not None else ""), file=out)
    if "e2e_facts" in fig:
        ping = fig["e2e_ping"]["min_wall"]
        facts_net = fig["e2e_facts"]["min_wall"] - ping
        lsof_net = fig["e2e_lsof"]["min_wall"] - ping
        print("end to end minus ping: frelink_facts %.3f s, command lsof %.3f s (lsof / facts = %.2fx)" % (
            facts_net, lsof_net, lsof_net / facts_net if facts_net > 0 else float("inf")), file=out)
    print("ratios: lsof / scan() = %.2fx; scan() / complete floor = %.2fx; complete floor / fd-only floor = %.2fx"
          % (lsof["min_wall"] / fig["scan"]["min_wall"], fig["scan"]["min_wall"] / floor["min_wall"],
             floor["min_wall"] / fig["floor_fd"]["min_wall"]), file=out)
    if "kscan" in fig:
        kscan, kscan_all = fig["kscan"]["min_wall"], fig["kscan_all"]["min_wall"]
        print("kernel listing: lsof / scan() = %.1fx, lsfd / scan() = %.1fx; scan() / complete floor = %.2fx, "
              "limit=0 %.2fx; /proc scan() / kernel scan() = %.1fx; lsof / the ioctl alone = %.0fx" % (
                  lsof["min_wall"] / kscan, fig["lsfd"]["min_wall"] / kscan, kscan / floor["min_wall"],
                  kscan_all / floor["min_wall"], fig["scan"]["min_wall"] / kscan,
                  lsof["min_wall"] / fig["kheld"]["min_wall"]), file=out)
    if result["profile"]:
        text, wall = result["profile"]
        print("\ncProfile of scan() with default options (%.3f s under the profiler):" % wall, file=out)
        print(text, file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true", help="2000 processes x 50 fds, 4 loop devices")
    parser.add_argument("--procs", type=int)
    parser.add_argument("--fds", type=int)
    parser.add_argument("--loops", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-e2e", action="store_true", help="no ansible runs")
    parser.add_argument("--profile", metavar="FILE", help="also cProfile scan() and write the top costs there")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--floors", metavar="DIR", help="prebuilt floor and floor_complete (no gcc here)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/facts needs root (loop devices, /proc/PID/map_files)")
    size = dict(BIG if args.big else SMALL)
    for key in ("procs", "fds", "loops"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    with tempfile.TemporaryDirectory(prefix="frelink-floor-") as tmp:
        floors = compile_floors(tmp, args.floors)
        result = measure(size["procs"], size["fds"], size["loops"], args.rounds, floors, e2e=not args.skip_e2e,
                         profile=args.profile)
    report(result)
    if args.profile:
        with open(args.profile, "w") as f:
            f.write(result["profile"][0])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in result.items() if k != "profile"}, f, indent=1)
    return result


if __name__ == "__main__":
    main()
