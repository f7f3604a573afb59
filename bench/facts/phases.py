# -*- coding: utf-8 -*-
"""Where scan() spends its time, phase by phase, without a profiler's overhead.

On the benchmark's workload (bench/facts/workload.py), min of --rounds runs of:
  collect (all kinds) | collect kinds=[fd] | collect kinds=[fd, cwd, root, exe] |
  select (filters + sort of every orphan) | summary | entries of the listed orphans
and two micro-measurements that separate Python's cost from the kernel's:
  reading every /proc/PID/maps whole (no parsing) and building one Orphan per orphan.

    bench/facts/phases.py [--big] [--rounds 5]      (root; see bench/facts/run.py)
"""

import argparse
import os
import sys
import time

import run as bench  # bench/facts/run.py: sets up the collection import
from ansible_collections.frelink.frelink.plugins.module_utils import scan as scan_mod  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils.mounts import read_all  # noqa: E402


def best(fn, rounds):
    times = []
    for _round in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_every_maps():
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pid in os.listdir(proc_fd):
            if pid.isdigit():
                try:
                    fd = os.open(pid + "/maps", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
                except OSError:
                    continue
                try:
                    read_all(fd)
                except OSError:
                    pass
                finally:
                    os.close(fd)
    finally:
        os.close(proc_fd)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = bench.BIG if args.big else bench.SMALL
    loops = size["loops"] if bench.loops_possible() else 0
    with bench.Workload(size["procs"], size["fds"], loops=loops):
        scanner = scan_mod.Scanner().collect()
        selected = scanner.select()
        listed = selected[:scan_mod.DEFAULT_LIMIT]
        sts = [(o.key, o.st, o.path) for o in scanner.orphans.values()]
        rows = [
            ("scan() default options, whole", scan_mod.scan),
            ("collect(), all kinds", lambda: scan_mod.Scanner().collect()),
            ("collect(), kinds=[fd]", lambda: scan_mod.Scanner(["fd"]).collect()),
            ("collect(), kinds=[fd, cwd, root, exe]", lambda: scan_mod.Scanner(["fd", "cwd", "root", "exe"]).collect()),
            ("Scanner() setup (mountinfo, memfd probe)", scan_mod.Scanner),
            ("select() of %d orphans (sort)" % len(scanner.orphans), scanner.select),
            ("summary() of %d orphans" % len(selected), lambda: scanner.summary(selected, len(listed))),
            ("entry() of the %d listed" % len(listed), lambda: [scanner.entry(o, False) for o in listed]),
            ("read every /proc/PID/maps whole (no parsing)", read_every_maps),
            ("Orphan() for each of %d orphans" % len(sts),
             lambda: [scan_mod.Orphan(k, k[0], k[1], st, p) for k, st, p in sts]),
        ]
        print("workload: %d processes x %d fds, %d loop devices; %d orphans; min of %d rounds"
              % (size["procs"], size["fds"], loops, len(scanner.orphans), args.rounds))
        for label, fn in rows:
            print("%-52s %8.3f s" % (label, best(fn, args.rounds)))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
