# -*- coding: utf-8 -*-
"""Where scan() spends its time, phase by phase, without a profiler's overhead.

On the benchmark's workload (bench/facts/workload.py), min of --rounds runs of:
  collect (all kinds) | collect kinds=[fd] | collect kinds=[fd, cwd, root, exe] |
  select (filters + sort of every orphan) | summary | entries of the listed orphans
and two micro-measurements that separate Python's cost from the kernel's:
  reading every /proc/PID/maps whole (no parsing), walking the file-backed mappings with the
  PROCMAP_QUERY ioctl (Linux 6.11+; what a scan could do instead) and building one Orphan per orphan.

    bench/facts/phases.py [--big] [--rounds 5]      (root; see bench/facts/run.py)
"""

import argparse
import errno
import fcntl
import os
import struct
import sys
import time

import run as bench  # bench/facts/run.py: sets up the collection import
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scan_mod  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.discovery import Orphan, Scanner  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.enrich import Report  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import read_all  # noqa: E402


def best(fn, rounds, setup=None):
    """min wall time of fn() (or fn(setup()) with setup() untimed) over rounds."""
    times = []
    for _round in range(rounds):
        arg = setup() if setup else None
        start = time.perf_counter()
        if setup:
            fn(arg)
        else:
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


# struct procmap_query (include/uapi/linux/fs.h, Linux 6.11+): 9 u64, 4 u32, 2 u64
PROCMAP_QUERY_STRUCT = struct.Struct("=9Q4I2Q")
PROCMAP_QUERY = 0xC0686611  # _IOWR('f', 17, struct procmap_query)
COVERING_OR_NEXT_VMA, FILE_BACKED_VMA = 0x10, 0x20


def query_every_maps():
    """Walk the file-backed mappings of every process with PROCMAP_QUERY, names not asked for.

    Returns the distinct (major, minor, inode) seen (what a scan would stat once each),
    or None when the kernel has no PROCMAP_QUERY."""
    seen = set()
    buf = bytearray(PROCMAP_QUERY_STRUCT.size)
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pid in os.listdir(proc_fd):
            if not pid.isdigit():
                continue
            try:
                fd = os.open(pid + "/maps", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
            except OSError:
                continue
            try:
                addr = 0
                while True:
                    PROCMAP_QUERY_STRUCT.pack_into(buf, 0, PROCMAP_QUERY_STRUCT.size,
                                                   COVERING_OR_NEXT_VMA | FILE_BACKED_VMA, addr,
                                                   0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
                    try:
                        fcntl.ioctl(fd, PROCMAP_QUERY, buf, True)
                    except OSError as exc:
                        if exc.errno == errno.ENOTTY:
                            return None
                        break
                    fields = PROCMAP_QUERY_STRUCT.unpack_from(buf)
                    addr = fields[4]
                    seen.add((fields[9], fields[10], fields[8]))
            finally:
                os.close(fd)
    finally:
        os.close(proc_fd)
    return seen


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = bench.BIG if args.big else bench.SMALL
    loops = size["loops"] if bench.loops_possible() else 0
    with bench.Workload(size["procs"], size["fds"], loops=loops):
        scanner = Scanner().collect()
        selected = scanner.select()
        listed = selected[:scan_mod.DEFAULT_LIMIT]
        sts = [(o.key, o.st, o.path) for o in scanner.orphans.values()]
        report = Report(scanner)

        def listing(fresh):
            chosen = fresh.select()
            return scan_mod._facts(fresh, chosen, scan_mod.DEFAULT_LIMIT)  # pylint: disable=protected-access

        rows = [
            ("scan() default options, whole", scan_mod.scan),
            ("collect(), all kinds", lambda: Scanner().collect()),
            ("collect(), kinds=[fd]", lambda: Scanner(["fd"]).collect()),
            ("collect(), kinds=[fd, cwd, root, exe]", lambda: Scanner(["fd", "cwd", "root", "exe"]).collect()),
            ("Scanner() setup (mountinfo, memfd probe)", Scanner),
            ("select() of %d orphans (sort)" % len(scanner.orphans), scanner.select),
            ("summary() of %d orphans" % len(selected), lambda: report.summary(selected, len(listed))),
            ("entry() of the %d listed, warm per-pid caches" % len(listed),
             lambda: [report.entry(o, False) for o in listed]),
            ("select() + summary + entries, fresh Scanner (what scan() adds to collect())", None),
            ("read every /proc/PID/maps whole (no parsing)", read_every_maps),
            ("PROCMAP_QUERY walk of every process (Python, no names)", query_every_maps),
            ("Orphan() for each of %d orphans" % len(sts),
             lambda: [Orphan(k, k[0], k[1], st, p) for k, st, p in sts]),
        ]
        distinct = query_every_maps()
        print("workload: %d processes x %d fds, %d loop devices; %d orphans; min of %d rounds; "
              "distinct mapped (device, inode): %s"
              % (size["procs"], size["fds"], loops, len(scanner.orphans), args.rounds,
                 len(distinct) if distinct is not None else "no PROCMAP_QUERY"))
        for label, fn in rows:
            if fn is None:
                took = best(listing, args.rounds, setup=lambda: Scanner().collect())
            else:
                took = best(fn, args.rounds)
            print("%-72s %8.3f s" % (label, took))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
