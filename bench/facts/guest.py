# -*- coding: utf-8 -*-
"""bench/facts/run.py in a Debian guest with the frelink module loaded: the kernel's listing
(FRELINK_IOC_HELD) against the /proc scan, lsof, lsfd and the C floors, in one run.

Boots one guest (harness), loads the module built for its kernel, installs lsof there if
the image lacks it (util-linux's lsfd is in the image), builds the two C floors in the suite's chroot (the
guest has no compiler) and runs run.py --skip-e2e in the guest; its table is printed as
is.  Under TCG every figure is slower than on hardware; the ratios are what counts.

    python bench/facts/guest.py [--suite bookworm] [--big] [--rounds 3] [run.py options]
"""
import argparse
import io
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import harness  # noqa: E402  pylint: disable=wrong-import-position

REMOTE = "/root/frelink-bench"
# 2000 forked holders need more than the default guest's memory
MEM_MB = 6144


def floors(suite):
    """Directory with floor and floor_complete built in SUITE's chroot, for its guest."""
    root = harness.chroot.build_root(suite)
    work = Path(tempfile.mkdtemp(prefix="floors-", dir=root))
    for source in ("floor.c", "floor_complete.c"):
        shutil.copy(REPO / "bench" / "facts" / source, work / source)
        harness.chroot_run(suite, ["gcc", "-O2", "-o", Path(source).stem, source],
                           cwd="/build/%s" % work.relative_to(root))
    return work


def payload():
    """A tar of what run.py needs: the collection's plugins and bench/facts."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for part in ("plugins", "bench/facts", "galaxy.yml"):
            tar.add(str(REPO / part), arcname=part,
                    filter=lambda info: None if "__pycache__" in info.name else info)
    return data.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=harness.SUITES)
    args, rest = parser.parse_known_args()
    module = harness.build_module(args.suite, REPO / "kmod")
    built = floors(args.suite)
    tmp = Path(tempfile.mkdtemp(prefix="frelink-bench-"))
    try:
        (tmp / "bench.tar.gz").write_bytes(payload())
        with harness.Guest(args.suite, mem_mb=MEM_MB) as guest:
            if guest.run("command -v lsof", check=False).returncode:
                guest.install_debs(["lsof"])
            guest.run("mkdir -p %s/floors" % REMOTE)
            guest.put(str(tmp / "bench.tar.gz"), REMOTE + "/bench.tar.gz")
            for local in (module, built / "floor", built / "floor_complete"):
                guest.put(str(local), "%s/%s" % (REMOTE, local.name if local == module else "floors/" + local.name))
            guest.run("cd %s && tar xzf bench.tar.gz && chmod +x floors/* && insmod frelink.ko" % REMOTE)
            kernel = guest.run("uname -r").stdout.strip()
            print("bench/facts in a Debian %s guest, kernel %s, frelink module loaded, QEMU TCG" % (args.suite, kernel),
                  flush=True)
            proc = guest.run("cd %s && ulimit -n 65536 && python3 bench/facts/run.py --skip-e2e --floors %s/floors %s"
                             % (REMOTE, REMOTE, " ".join(rest)), timeout=7200, check=False)
            print(proc.stdout)
            if proc.returncode:
                print(proc.stderr[-5000:], file=sys.stderr)
                return proc.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        harness.util.remove_tree(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
