# -*- coding: utf-8 -*-
"""bench/facts/run.py end to end on a small real workload: every tool runs, its output is
parsed to (dev, ino), and the scores are what each tool can see. No timing is asserted.

- frelink scan() (default and limit=0) and the C complete floor (maps text or PROCMAP_QUERY):
  recall and precision 100%
- lsof -nP +L1 and lsfd -n -Q DELETED: every fd-held orphan, but not the mapped-only or
  loop-only ones, and decoys (O_TMPFILE, memfd) as false positives
- the C fd-only floor: every fd-held path, decoys included
"""

import json
import subprocess

from orphans import facts_bench, require_root

bench = facts_bench()


def test_parsers_on_each_tools_own_output(tmp_path):
    require_root()
    floors = bench.compile_floors(str(tmp_path))
    with bench.Workload(40, 20, loops=1, decoy_every=10) as workload:
        truth = set(workload.truth)
        fd_truth = {key for key, (kind, _path) in workload.truth.items() if kind == "fd"}
        assert truth - fd_truth, "the workload has mapped-only and loop-only orphans"

        complete = bench.complete_floor_found(bench.run_cmd([floors["complete"], "-p"])[2], workload)
        assert complete == truth
        query = bench.complete_floor_found(bench.run_cmd([floors["complete"], "-p", "-q"])[2], workload)
        assert query == truth

        lsof = bench.lsof_text_found(bench.run_cmd(["lsof", "-nP", "+L1"])[2], workload)
        lsof_f = bench.lsof_found(subprocess.run(["lsof", "-nP", "+L1", "-F", "pfDi"], stdout=subprocess.PIPE,
                                                 text=True, errors="surrogateescape", check=False).stdout, workload)
        assert lsof == lsof_f  # the default text and the -F fields say the same
        assert fd_truth <= lsof and not (truth - fd_truth) & lsof and lsof - truth

        lsfd = bench.lsfd_found(bench.run_cmd(["lsfd", "-n", "-Q", "DELETED"])[2], workload, bench.mount_devices())
        assert fd_truth <= lsfd and not (truth - fd_truth) & lsfd and lsfd - truth

        paths = bench.floor_found(bench.run_cmd([floors["fd"], "-p"])[2], workload)
        fd_paths = {path for key, (_kind, path) in workload.truth.items() if key in fd_truth}
        assert fd_paths <= paths and paths - fd_paths


def test_run_py_small_interleaved(tmp_path, capsys):
    """The whole benchmark at a small size, with the ansible rounds and the profile."""
    require_root()
    out = tmp_path / "bench.json"
    result = bench.main(["--procs", "30", "--fds", "16", "--loops", "1", "--rounds", "2",
                         "--profile", str(tmp_path / "profile.txt"), "--json", str(out)])
    printed = capsys.readouterr().out
    figures = result["figures"]
    for name in ("scan", "scan_all", "floor", "floor_query"):
        assert (figures[name]["recall"], figures[name]["precision"]) == (1.0, 1.0), (name, figures[name])
    for name in ("lsof", "lsfd", "floor_fd"):
        assert figures[name]["recall"] < 1.0 and figures[name]["precision"] < 1.0, (name, figures[name])
    for name in ("e2e_facts", "e2e_lsof", "e2e_ping"):
        assert len(figures[name]["walls"]) == 2 and min(figures[name]["walls"]) > 0
    assert result["info"]["facts_json_bytes"] > 0 and result["info"]["e2e_facts_stdout_bytes"] > 0
    assert "C complete floor" in printed and "KB of JSON" in printed and "/complete" in printed
    assert "cumulative" in (tmp_path / "profile.txt").read_text()
    assert json.loads(out.read_text())["figures"]["floor"]["recall"] == 1.0
