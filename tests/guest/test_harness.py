"""The guest harness itself, on every suite: image, chroot module build, boot or restore,
module load in the guest kernel, users, file copy, Ansible through inventory_path(),
a real reboot, and the detached CLI that molecule and the demo use.

One guest per suite (restored from the saved booted state when there is one), plus one
reboot of the first suite (a real cold boot of the guest kernel; the code path is
the same for every suite, and the molecule scenarios reboot bookworm and sid too).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness
from harness import debian

REPO = Path(__file__).resolve().parents[2]

HELLO_C = textwrap.dedent("""\
    #include <linux/module.h>
    #include <linux/init.h>

    static int __init hello_init(void)
    {
    \tpr_info("frelink-harness-hello: loaded\\n");
    \treturn 0;
    }

    static void __exit hello_exit(void)
    {
    \tpr_info("frelink-harness-hello: unloaded\\n");
    }

    module_init(hello_init);
    module_exit(hello_exit);
    MODULE_LICENSE("GPL");
    MODULE_DESCRIPTION("harness self-test module");
    """)


@pytest.fixture(scope="module")
def hello_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("hello")
    (src / "hello.c").write_text(HELLO_C)
    (src / "Kbuild").write_text("obj-m := hello.o\n")
    return src


def _venv_tool(name):
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        pytest.fail(f"{tool} not found: run the tests with the project venv (make test), "
                    "which has ansible-core")
    return tool


def test_mirror_is_read_from_apt_sources(tmp_path):
    """deb822 and one-line sources are both read; disabled and deb-src entries are not."""
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(textwrap.dedent("""\
        Types: deb-src
        URIs: http://src.example/debian
        Suites: bookworm

        Types: deb
        # a comment
        URIs: http://archive.example/debian
        Suites: bookworm bookworm-updates
        Components: main

        Types: deb
        URIs: http://disabled.example/debian
        Suites: sid
        Enabled: no
        """))
    (tmp_path / "etc/apt/sources.list").write_text(
        "deb [signed-by=/k.gpg] http://security.example/debian-security bookworm-security main\n")
    assert debian.host_apt_sources(str(tmp_path)) == [
        ("http://archive.example/debian", "bookworm", ["main"]),
        ("http://archive.example/debian", "bookworm-updates", ["main"]),
        ("http://security.example/debian-security", "bookworm-security", ["main"]),
    ]


@pytest.mark.guest
def test_chroot_run_reports_output_and_failure():
    suite = harness.SUITES[0]
    ok = harness.chroot_run(suite, ["sh", "-c", "echo out; echo err >&2; pwd"], cwd="/etc")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out\n/etc\n", "err\n")
    failed = harness.chroot_run(suite, ["sh", "-c", "exit 3"], check=False)
    assert failed.returncode == 3
    with pytest.raises(harness.CommandError) as error:
        harness.chroot_run(suite, ["sh", "-c", "echo why >&2; exit 4"])
    assert error.value.returncode == 4 and "why" in str(error.value)
    # nothing stays mounted on the host after a call
    rootfs = str(harness.prepare(suite).rootfs)
    assert rootfs not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.guest
@pytest.mark.parametrize("suite", harness.SUITES)
def test_guest_kernel_loads_module_built_in_chroot(suite, hello_src, tmp_path):
    env = harness.prepare(suite)
    assert harness.rootfs.is_file(env.rootfs, harness.image.headers_makefile(env.kernel_release))

    ko = harness.build_module(suite, hello_src)
    assert ko.name == "hello.ko" and ko.is_file()
    assert not list(hello_src.glob("*.ko")), "build_module must not build in the source tree"
    in_chroot = "/build/%s" % ko.relative_to(harness.chroot.build_root(suite))
    vermagic = harness.chroot_run(suite, ["modinfo", "-F", "vermagic", in_chroot]).stdout
    assert vermagic.split()[0] == env.kernel_release

    with harness.Guest(suite) as guest:
        assert guest.run("uname -r").stdout.strip() == env.kernel_release
        port = guest.ssh_port

        guest.put(str(ko), "/root/hello.ko")
        guest.run("insmod /root/hello.ko")
        assert "hello" in guest.run("lsmod").stdout.split()
        guest.run("rmmod hello")
        assert "hello" not in guest.run("lsmod").stdout.split()
        assert "frelink-harness-hello: loaded" in guest.run("dmesg").stdout

        # command results, users, sudo and copies both ways
        failed = guest.run("echo oops >&2; exit 7", check=False)
        assert (failed.returncode, failed.stderr) == (7, "oops\n")
        with pytest.raises(harness.GuestCommandError) as error:
            guest.run("echo because >&2; false")
        assert "because" in str(error.value)
        assert guest.run("cat", input="stdin text").stdout == "stdin text"
        assert guest.run("id -un", user="tester").stdout == "tester\n"
        assert guest.run("sudo -n id -un", user="tester").stdout == "root\n"
        guest.run("printf 'from %s' $(hostname) > /root/back.txt")
        guest.get("/root/back.txt", tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_text() == f"from frelink-{suite}"

        # apt inside uses the host's mirror, reachable through QEMU user networking
        first_source = guest.run("grep -m1 '^deb ' /etc/apt/sources.list").stdout.split()
        assert first_source[1:3] == debian.apt_source_lines(suite)[0].split()[1:3]
        guest.run("python3 -c 'import sys, urllib.request; urllib.request.urlopen("
                  f"sys.argv[1] + \"/dists/{suite}/InRelease\", timeout=60).read(64)' "
                  + first_source[1], timeout=120)

        ansible = subprocess.run([str(_venv_tool("ansible")), "-i", str(guest.inventory_path()),
                                  "guest", "-m", "ping"], capture_output=True, text=True,
                                 timeout=300, env={**os.environ, "ANSIBLE_NOCOLOR": "1"}, check=False)
        assert ansible.returncode == 0, ansible.stdout + ansible.stderr
        assert '"ping": "pong"' in ansible.stdout

        if suite != harness.SUITES[0]:
            return  # the reboot path does not depend on the suite; the molecule scenarios reboot the others
        boot_id = guest.run("cat /proc/sys/kernel/random/boot_id").stdout
        guest.run("insmod /root/hello.ko")
        guest.reboot()
        assert guest.ssh_port == port
        assert guest.run("cat /proc/sys/kernel/random/boot_id").stdout != boot_id
        assert guest.run("uname -r").stdout.strip() == env.kernel_release
        assert "hello" not in guest.run("lsmod").stdout.split()
        assert guest.run("cat /root/back.txt").stdout == f"from frelink-{suite}"
        assert f"Linux version {env.kernel_release}" in guest.console_log()


@pytest.mark.guest
def test_detached_cli_boot_and_stop(tmp_path):
    suite = harness.SUITES[0]
    instance = tmp_path / "instance"
    boot = subprocess.run([sys.executable, "-m", "harness", "boot", suite,
                           "--instance-dir", str(instance)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    assert boot.returncode == 0, boot.stderr
    info = json.loads(boot.stdout)
    try:
        assert {"host", "port", "user", "key", "pid"} <= set(info)
        assert _alive(info["pid"])
        ssh = subprocess.run(["ssh", "-i", info["key"], "-p", str(info["port"]),
                              "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30",
                              f"{info['user']}@{info['host']}", "uname -r"],
                             capture_output=True, text=True, timeout=120, check=False)
        assert ssh.stdout.strip() == harness.prepare(suite).kernel_release, ssh.stderr
        again = subprocess.run([sys.executable, "-m", "harness", "boot", suite,
                                "--instance-dir", str(instance)], cwd=REPO,
                               capture_output=True, text=True, timeout=600, check=False)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stop = subprocess.run([sys.executable, "-m", "harness", "stop", "--instance-dir",
                               str(instance)], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=False)
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["stopped"] is True
    assert not _alive(info["pid"])
    assert not (instance / "overlay.qcow2").exists()


def _alive(pid):
    """A process that runs (a zombie left for an init that reaps slowly does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
