# -*- coding: utf-8 -*-
"""bench/facts/run.py in a Debian guest with the frelink module loaded: the kernel's listing
(FRELINK_IOC_HELD) against the /proc scan, lsof, lsfd and the C floors, in one run.

Boots one guest (harness), loads the module built for its kernel, installs lsof and lsfd there
if the image lacks them, builds the two C floors in the suite's chroot (the
guest has no compiler) and runs run.py --skip-e2e in the guest; its table is printed as
is.  With --e2e, the guest's own Debian ansible-core is installed and run.py's end-to-end
rows run too (ansible localhost in the guest: frelink_facts, lsof through the command
module, ping); the collection needs ansible-core 2.16 or later (trixie and sid have it,
bookworm's is 2.14).  Under TCG every figure is slower than on hardware; the ratios are
what counts.

    python bench/facts/guest.py [--suite bookworm] [--e2e] [--big] [--rounds 3] [run.py options]
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
# (Debian package, command) the benchmark runs, installed when the guest lacks them
# (trixie moved lsfd to util-linux-extra); the end-to-end rows also need ansible
TOOLS = (("lsof", "lsof"), ("util-linux-extra", "lsfd"))
E2E_TOOLS = (("ansible-core", "ansible"),)
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
    parser.add_argument("--e2e", action="store_true", help="also the end-to-end rows, with the guest's ansible-core")
    args, rest = parser.parse_known_args()
    module = harness.build_module(args.suite, REPO / "kmod")
    built = floors(args.suite)
    tmp = Path(tempfile.mkdtemp(prefix="frelink-bench-"))
    try:
        (tmp / "bench.tar.gz").write_bytes(payload())
        with harness.Guest(args.suite, mem_mb=MEM_MB) as guest:
            tools = TOOLS + (E2E_TOOLS if args.e2e else ())
            wanted = [package for package, command in tools if guest.run("command -v " + command, check=False).returncode]
            if wanted:
                guest.install_debs(wanted)
            guest.run("mkdir -p %s/floors" % REMOTE)
            guest.put(str(tmp / "bench.tar.gz"), REMOTE + "/bench.tar.gz")
            for local in (module, built / "floor", built / "floor_complete"):
                guest.put(str(local), "%s/%s" % (REMOTE, local.name if local == module else "floors/" + local.name))
            guest.run("cd %s && tar xzf bench.tar.gz && chmod +x floors/* && insmod frelink.ko" % REMOTE)
            kernel = guest.run("uname -r").stdout.strip()
            ansible = guest.run("ansible --version | head -n 1", check=False).stdout.strip() if args.e2e else ""
            print("bench/facts in a Debian %s guest, kernel %s, frelink module loaded, QEMU TCG%s"
                  % (args.suite, kernel, ", " + ansible if ansible else ""), flush=True)
            proc = guest.run("cd %s && ulimit -n 65536 && python3 bench/facts/run.py %s--floors %s/floors %s"
                             % (REMOTE, "" if args.e2e else "--skip-e2e ", REMOTE, " ".join(rest)), timeout=7200,
                             check=False)
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
