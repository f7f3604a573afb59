"""Relink time vs file size against `cp` of the same deleted file, in a guest.

Boots one Debian guest (harness), loads the frelink module built for its
kernel, and runs guest_bench.py there: 1 MiB ... 8 GiB sparse files, and
filled files up to --filled-max-mib (1 GiB by default: the guest disk is 8 GiB
and a filled file needs room for itself and its copy). Prints one table; the
ratios are from the same run. Under TCG every number is slower than on
hardware, but cp grows with the size and relink does not.

    python bench/relink/run.py [--suite bookworm] [--sparse-max-mib 8192] [--filled-max-mib 1024]
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import harness  # noqa: E402  pylint: disable=wrong-import-position

REMOTE = "/root/frelink-bench"


def human(size):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return "%d %s" % (size, unit)
        size //= 1024
    return "%d TiB" % size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=harness.SUITES)
    parser.add_argument("--sparse-max-mib", type=int, default=8192)
    parser.add_argument("--filled-max-mib", type=int, default=1024)
    args = parser.parse_args()
    module = harness.build_module(args.suite, REPO / "kmod")
    with harness.Guest(args.suite) as guest:
        guest.run("mkdir -p %s/work" % REMOTE)
        for local in (module, REPO / "plugins" / "module_utils" / "_frelink" / "kmod_abi.py", Path(__file__).with_name("guest_bench.py")):
            guest.put(str(local), "%s/%s" % (REMOTE, local.name))
        guest.run("insmod %s/frelink.ko" % REMOTE)
        kernel = guest.run("uname -r").stdout.strip()
        fstype = guest.run("findmnt -no FSTYPE -T %s/work" % REMOTE).stdout.strip()
        proc = guest.run("python3 %s/guest_bench.py %s/work %d %d" % (
            REMOTE, REMOTE, args.sparse_max_mib, args.filled_max_mib), timeout=3600)
        rows = json.loads(proc.stdout)
    print("relink vs cp of a deleted open file: Debian %s, kernel %s, %s, QEMU TCG" % (args.suite, kernel, fstype))
    print("%-9s %-7s %14s %14s %12s %10s" % (
        "size", "kind", "relink ms med", "relink ms max", "cp ms", "cp/relink"))
    for row in rows:
        cells = (human(row["size"]), row["kind"], row["relink_s"] * 1000, row["relink_max_s"] * 1000,
                 row["cp_s"] * 1000, row["cp_s"] / row["relink_s"])
        print("%-9s %-7s %14.3f %14.3f %12.1f %10.0f" % cells)
    medians = [row["relink_s"] for row in rows]
    print("relink median: %.3f .. %.3f ms from %s to %s; cp: %.1f .. %.1f ms" % (
        min(medians) * 1000, max(medians) * 1000, human(rows[0]["size"]), human(rows[-1]["size"]),
        min(r["cp_s"] for r in rows) * 1000, max(r["cp_s"] for r in rows) * 1000))


if __name__ == "__main__":
    main()
