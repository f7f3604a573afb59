# -*- coding: utf-8 -*-
"""The benchmark's workload and scoring on a small scale: scan() finds every orphan of
a real forked workload and nothing else; lsof +L1 and the C floor miss what they miss.
No timing is asserted (bench/facts/run.py measures that)."""

import os
import subprocess

from orphans import facts_bench, require_root

bench = facts_bench()


def test_small_workload_recall_and_precision(tmp_path):
    require_root()
    floor = bench.compile_floor(str(tmp_path))
    # The caller holds a deleted file of its own, as a pytest worker may after another
    # test: the forked workload must not hold it too (CI failed so once: 3 extra orphans).
    callers = tmp_path / "callers-own"
    with open(callers, "wb") as own, bench.Workload(60, 20, loops=1, decoy_every=10) as workload:
        callers.unlink()
        assert os.fstat(own.fileno()).st_nlink == 0
        truth = set(workload.truth)
        kinds = {kind for kind, _path in workload.truth.values()}
        assert kinds == {"fd", "mmap", "loop"}
        fd_truth = {key for key, (kind, _path) in workload.truth.items() if kind == "fd"}

        facts = bench.scan(limit=0)
        found = bench.scan_found(facts, workload)
        assert found == truth
        assert bench.score(found, truth) == (1.0, 1.0)

        lsof = bench.lsof_found(subprocess.run(["lsof", "-nP", "+L1", "-F", "pfDi"], stdout=subprocess.PIPE,
                                               text=True, errors="surrogateescape", check=False).stdout, workload)
        assert fd_truth <= lsof  # every fd-held orphan ...
        assert not (truth - fd_truth) & lsof  # ... but no mapped-only or loop-only one
        assert lsof - truth  # and decoys (O_TMPFILE, memfd) as false positives

        floor_paths = bench.floor_found(subprocess.run([floor, "-p"], stdout=subprocess.PIPE, text=True, errors="surrogateescape",
                                                       stderr=subprocess.DEVNULL, check=True).stdout, workload)
        fd_paths = {path for key, (_kind, path) in workload.truth.items() if key in fd_truth}
        assert fd_paths <= floor_paths and floor_paths - fd_paths  # text only: decoys included
