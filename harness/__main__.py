"""Command line: python -m harness {prepare,boot,stop,ssh} ...

    prepare SUITE [--rebuild]          build (or check) the cached image; prints its facts as JSON
    boot SUITE --instance-dir DIR      boot a detached guest; prints host, port, user, key, pid
    stop --instance-dir DIR            power it off and remove its overlay
    ssh --instance-dir DIR [CMD...]    log in to (or run CMD in) a detached guest
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .debian import KERNEL_SUITES
from .guest import QMP, Guest
from .image import prepare
from .util import HarnessError

STATE_FILE = "guest.json"


def _is_our_qemu(pid, instance_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "qemu-system" in cmdline and str(instance_dir) in cmdline


def cmd_prepare(args):
    env = prepare(args.suite, rebuild=args.rebuild)
    print(json.dumps({"suite": env.suite, "kernel_release": env.kernel_release,
                      "rootfs": str(env.rootfs), "disk": str(env.disk),
                      "vmlinuz": str(env.vmlinuz), "initrd": str(env.initrd),
                      "ssh_key": str(env.ssh_key), "version": env.key}, indent=2))


def cmd_boot(args):
    instance_dir = Path(args.instance_dir).resolve()
    state = instance_dir / STATE_FILE
    if state.exists():
        old = json.loads(state.read_text())
        if _is_our_qemu(old.get("pid"), instance_dir):
            raise HarnessError(f"a guest is already running from {instance_dir} (pid {old['pid']}); "
                               f"stop it first: python -m harness stop --instance-dir {instance_dir}")
    guest = Guest(args.suite, mem_mb=args.mem, kernel_cmdline_extra=args.cmdline,
                  instance_dir=instance_dir, detached=True)
    try:
        guest.start()
    except BaseException:
        guest.stop()
        raise
    info = guest.info()
    state.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


def cmd_stop(args):
    instance_dir = Path(args.instance_dir).resolve()
    state = instance_dir / STATE_FILE
    if not state.exists():
        print(json.dumps({"stopped": False, "reason": f"no {STATE_FILE} in {instance_dir}"}))
        return
    info = json.loads(state.read_text())
    pid = info.get("pid")
    if _is_our_qemu(pid, instance_dir):
        try:
            qmp = QMP(instance_dir / "qmp.sock", timeout=5)
            qmp.execute("quit")
            qmp.close()
        except (OSError, HarnessError, ValueError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _is_our_qemu(pid, instance_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_our_qemu(pid, instance_dir):
            os.kill(pid, signal.SIGKILL)
    for name in ("overlay.qcow2", "qmp.sock", STATE_FILE):
        path = instance_dir / name
        if path.exists():
            path.unlink()
    print(json.dumps({"stopped": True, "pid": pid}))


def cmd_ssh(args):
    info = json.loads((Path(args.instance_dir).resolve() / STATE_FILE).read_text())
    argv = ["ssh", "-i", info["key"], "-p", str(info["port"]), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"{args.user}@{info['host']}", *args.command]
    os.execvp("ssh", argv)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="build or check the cached image of SUITE")
    p.add_argument("suite", choices=KERNEL_SUITES)
    p.add_argument("--rebuild", action="store_true", help="rebuild even when the cache is valid")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("boot", help="boot a detached guest")
    p.add_argument("suite", choices=KERNEL_SUITES)
    p.add_argument("--instance-dir", required=True)
    p.add_argument("--mem", type=int, default=2048, help="guest memory in MiB")
    p.add_argument("--cmdline", default="", help="extra kernel command line")
    p.set_defaults(func=cmd_boot)
    p = sub.add_parser("stop", help="stop a detached guest")
    p.add_argument("--instance-dir", required=True)
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("ssh", help="ssh into a detached guest")
    p.add_argument("--instance-dir", required=True)
    p.add_argument("--user", default="root")
    p.add_argument("command", nargs="*")
    p.set_defaults(func=cmd_ssh)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except HarnessError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
