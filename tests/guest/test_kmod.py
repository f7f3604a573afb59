"""The frelink kernel module, proven in real Debian guests (6.1, 6.12, 7.x).

One guest boot per suite for this whole module: the module is built in the
suite's chroot, loaded in the guest, and tests/guest/payload/kmod_suite.py
runs every scenario there once and returns JSON; the tests below assert on
exact results.  See docs/kmod.md.
"""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = REPO / "tests" / "guest" / "payload" / "kmod_suite.py"
KMOD_ABI = REPO / "plugins" / "module_utils" / "kmod_abi.py"
REMOTE = "/root/frelink-kmod"
RELINK_FILESYSTEMS = ("ext4", "ext4-orphan_file", "xfs", "btrfs", "tmpfs")
STRESS = {"ext4": 240, "btrfs": 60}
OVERLAY_BASES = ("ext4", "xfs")
RACE_FILESYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs")
RACE_ROUNDS, RACE_LOCKED_ROUNDS = 800, 200  # 1000 rounds per filesystem
FUZZ_REQUESTS = 3000
OOPS = re.compile(r"Oops|BUG:|WARNING:|Call Trace|general protection|KASAN|UBSAN|"
                  r"possible circular locking|blocked for more than|Kernel panic|RIP:")


@pytest.fixture(scope="module", params=harness.SUITES)
def kmod_guest(request):
    """(suite, guest, results): module loaded, every payload scenario run once."""
    suite = request.param
    module = harness.build_module(suite, REPO / "kmod")
    with harness.Guest(suite) as guest:
        guest.run("mkdir -p %s" % REMOTE)
        for local in (module, PAYLOAD, KMOD_ABI):
            guest.put(str(local), "%s/%s" % (REMOTE, local.name))
        guest.run("dmesg -C; insmod %s/frelink.ko" % REMOTE)
        scenarios = ["relink:" + fs for fs in RELINK_FILESYSTEMS]
        scenarios += ["refusals", "unsupported", "loop", "mapped_and_exe"]
        scenarios += ["stress:%s:%d" % item for item in STRESS.items()]
        scenarios += ["overlay:" + fs for fs in OVERLAY_BASES]
        scenarios += ["not_allowed", "ro_source", "log_escape"]
        scenarios += ["race:%s:%d:%d" % (fs, RACE_ROUNDS, RACE_LOCKED_ROUNDS) for fs in RACE_FILESYSTEMS]
        scenarios += ["fuzz"]
        proc = guest.run("cd %s && python3 kmod_suite.py %s --fuzz %d" % (
            REMOTE, " ".join(shlex.quote(s) for s in scenarios), FUZZ_REQUESTS), timeout=1800)
        try:
            results = json.loads(proc.stdout)
        except ValueError:
            pytest.fail("%s: the payload printed no JSON:\n%s\n%s" % (suite, proc.stdout[-3000:], proc.stderr[-3000:]))
        print("\n[%s] scenario seconds: %s" % (suite, {k: v.get("seconds") for k, v in results.items()}))
        yield suite, guest, results


def scenario(kmod_guest, name):
    suite, results = kmod_guest[0], kmod_guest[2]
    res = results[name]
    assert "exception" not in res, "%s: %s raised in the guest:\n%s" % (suite, name, res["exception"])
    return res


CLEAN_FSCK = {"rc": 0, "output": ""}


@pytest.mark.parametrize("fs", RELINK_FILESYSTEMS)
def test_relink_deleted_open_file(kmod_guest, fs):
    res = scenario(kmod_guest, "relink:" + fs)
    assert res["deleted_nlink"] == 0
    # what userspace alone cannot do
    assert res["linkat_follow"] == "ENOENT"
    assert res["linkat_empty_path"] == "ENOENT"
    # by fd (opened on /proc/PID/fd/N) while another process keeps writing
    assert res["by_fd"] == "OK"
    assert res["by_fd_same_inode"] is True
    assert res["by_fd_nlink"] == 1
    assert res["by_fd_content_equal"] is True
    assert res["writes_after_relink_visible"] is True
    # by (st_dev, st_ino)
    assert res["by_inode"] == "OK"
    assert res["by_inode_same_inode"] is True
    assert res["by_inode_nlink"] == 1
    assert res["by_inode_content_equal"] is True
    assert res["listing_after_holders_exit"] == ["restored", "restored2"]
    if fs == "tmpfs":
        assert res["content_after_holders_exit"] == {"restored": True, "restored2": True}
    else:
        assert res["fsck"] == CLEAN_FSCK
        assert res["listing_after_remount"] == ["restored", "restored2"]
        assert res["content_after_remount"] == {"restored": True, "restored2": True}
        assert res["nlink_after_remount"] == {"restored": 1, "restored2": 1}


def test_btrfs_subvolumes(kmod_guest):
    res = scenario(kmod_guest, "relink:btrfs")["subvolumes"]
    assert res["same_ino_in_both"] is True
    assert res["devs_differ"] is True
    assert res["by_fd_other_subvolume"] == "EXDEV"
    assert res["by_inode_other_subvolume_dir"] == "EXDEV"
    # (dev of sub2, ino) is sub2's live file: never a candidate, not even looked at
    assert res["by_inode_dev_of_other_subvolume"] == "ENOENT"
    assert res["sub2_listing"] == ["live"]
    assert res["by_inode"] == "OK"
    assert res["content_equal"] is True
    assert res["fsck"] == CLEAN_FSCK
    assert res["present_after_remount"] is True


EXPECTED_REFUSALS = {
    "flags_zero": "EINVAL",
    "flags_both": "EINVAL",
    "flags_unknown": "EINVAL",
    "reserved0_set": "EINVAL",
    "reserved_set": "EINVAL",
    "by_fd_with_ino": "EINVAL",
    "by_inode_with_src_fd": "EINVAL",
    "by_inode_dev_zero": "EINVAL",
    "name_not_terminated": "ENAMETOOLONG",
    "name_empty": "EILSEQ",
    "name_dot": "EILSEQ",
    "name_dotdot": "EILSEQ",
    "name_slash": "EILSEQ",
    "name_trailing_slash": "EILSEQ",
    "bad_src_fd": "EBADF",
    "negative_src_fd": "EBADF",
    "bad_dir_fd": "EBADF",
    "dir_fd_not_dir": "ENOTDIR",
    "name_exists": "EEXIST",
    "link_count_not_zero": "EMLINK",
    "dir_on_other_fs": "EXDEV",
    "by_inode_dev_mismatch": "EXDEV",
    "by_inode_not_in_memory": "ENOENT",
    "directory": "EMEDIUMTYPE",
    "fifo": "EMEDIUMTYPE",
    "read_only_mount": "EROFS",
    "immutable": "EPERM",
    "plain_linkat_after_failed_vfs_link": "ENOENT",
    "wrong_ioctl_cmd": "ENOTTY",
}


def test_every_refusal_has_its_errno_and_changes_nothing(kmod_guest):
    res = scenario(kmod_guest, "refusals")
    assert res["errno"] == EXPECTED_REFUSALS
    assert res["listing_unchanged"] is True
    assert res["existing_unchanged"] is True
    assert res["victim_still_deleted"] == 0
    assert res["other_fs_unchanged"] == []
    # the refused inode is intact: it can still be relinked afterwards
    assert res["relink_after_refusals"] == "OK"
    assert res["relinked_content"] is True
    assert res["last_holder_gone"] == "ENOENT"
    assert res["fsck"] == CLEAN_FSCK


def test_non_root_is_refused(kmod_guest):
    res = scenario(kmod_guest, "refusals")["non_root"]
    assert res == {
        "device_mode": "0o600",
        "open_0600": "EACCES",
        "ioctl_on_inherited_fd": "EPERM",
        "open_0666": "EPERM",
        "listing_unchanged": True,
    }
    guest = kmod_guest[1]
    proc = guest.run("python3 -c 'import os; os.open(\"/dev/frelink\", os.O_RDWR)'", user="tester", check=False)
    assert proc.returncode != 0 and "PermissionError" in proc.stderr


def test_filesystems_without_tmpfile_or_link_refuse(kmod_guest):
    res = scenario(kmod_guest, "unsupported")
    for fs in ("jfs", "vfat"):
        assert res[fs] == {"by_fd": "EOPNOTSUPP", "by_inode": "EOPNOTSUPP", "listing_unchanged": True,
                           "still_deleted": 0}, fs


def test_filesystems_off_the_allowlist_refuse(kmod_guest):
    res = scenario(kmod_guest, "not_allowed")
    for fs in ("ramfs", "hugetlbfs"):
        assert res[fs] == {"by_fd": "EOPNOTSUPP", "by_inode": "EOPNOTSUPP", "listing_unchanged": True,
                           "still_deleted": 0}, fs


@pytest.mark.parametrize("base", OVERLAY_BASES)
def test_overlay_relinks_the_upper_inode(kmod_guest, base):
    res = scenario(kmod_guest, "overlay:" + base)
    assert res["overlay_dev_differs"] is True
    assert res["upper_deleted"] is True
    assert res["nlink_after_delete"] == 0
    # the merged dir is the overlay, not the upper filesystem
    assert res["by_fd_into_merged"] == "EXDEV"
    assert res["by_fd_into_other_fs"] == "EXDEV"
    # by (dev, ino) an overlay is never searched: its st_dev is anonymous
    assert res["by_inode_overlay_dev_dir_merged"] == "EOPNOTSUPP"
    assert res["by_inode_overlay_dev_dir_upper_fs"] == "EXDEV"
    assert res["restore_empty_after_refusals"] == []
    assert res["by_fd"] == "OK"
    assert res["same_upper_inode"] is True
    assert res["nlink"] == 1
    assert res["merged_listing"] == ["lowfile"]
    assert res["write_after_relink_in_it"] is True
    # lower-only: the lower copy keeps its name, nothing changes
    assert res["lower_only_by_fd"] == "EMLINK"
    assert res["lower_intact"] is True
    assert res["restore_listing"] == ["victim"]
    assert res["fsck"] == CLEAN_FSCK
    assert res["content_after_remount"] is True


def test_source_seen_through_read_only_mount_is_refused(kmod_guest):
    res = scenario(kmod_guest, "ro_source")
    assert res == {"by_fd_through_ro_bind": "EROFS", "listing_unchanged": True, "still_deleted": 0,
                   "by_fd_through_rw_mount": "OK", "fsck": CLEAN_FSCK, "seconds": res["seconds"]}


def test_logged_name_is_escaped(kmod_guest):
    res = scenario(kmod_guest, "log_escape")
    assert res["by_fd"] == "OK"
    assert res["escaped_in_log"] is True
    assert res["forged_lines"] == []


@pytest.mark.parametrize("fs", RACE_FILESYSTEMS)
def test_race_with_the_holders_own_linkat(kmod_guest, fs):
    res = scenario(kmod_guest, "race:%s:%d:%d" % (fs, RACE_ROUNDS, RACE_LOCKED_ROUNDS))
    print("\n[%s] race %s: %s in %s s" % (kmod_guest[0], fs, res["outcomes"], res["race_seconds"]))
    assert res["violations"] == []
    assert sum(res["outcomes"].values()) == RACE_ROUNDS + RACE_LOCKED_ROUNDS
    assert res["leftover"] == []
    if fs != "tmpfs":
        assert res["fsck"] == CLEAN_FSCK


def test_loop_backing_file(kmod_guest):
    res = scenario(kmod_guest, "loop")
    assert res["loop_status_matches"] is True
    assert res["backing_file_deleted"].endswith("(deleted)")
    assert res["by_inode"] == "OK"
    assert res["same_inode"] is True
    assert res["nlink"] == 1
    assert res["inner_fsck"] == 0
    assert res["outer_fsck"] == CLEAN_FSCK
    assert res["inner_files"] == {"before": True, "during": True, "after": True}


def test_mapped_only_and_deleted_exe(kmod_guest):
    res = scenario(kmod_guest, "mapped_and_exe")
    assert res["map_files_entries"] >= 1
    assert res["fd_entries"] == 0
    assert res["deleted_nlink"] == 0
    assert res["mapped_by_fd"] == "OK"
    assert res["mapping_write_visible"] is True
    assert res["mapped_same_inode"] is True
    assert res["exe_deleted_nlink"] == 0
    assert res["exe_by_fd"] == "OK"
    assert res["exe_content_equal"] is True
    assert res["exe_runs"] == 0
    assert res["fsck"] == CLEAN_FSCK


@pytest.mark.parametrize("fs", sorted(STRESS))
def test_stress(kmod_guest, fs):
    res = scenario(kmod_guest, "stress:%s:%d" % (fs, STRESS[fs]))
    outcomes = res["outcomes"]
    print("\n[%s] stress %s outcomes: %s" % (kmod_guest[0], fs, outcomes))
    assert res["violations"] == []
    assert sum(outcomes.values()) == STRESS[fs]
    thirds = {mode: -(-(STRESS[fs] - i) // 3) for i, mode in enumerate(("closed_before", "held", "racing"))}
    # deterministic modes have exactly one possible outcome
    assert outcomes.get("closed_before:ENOENT") == thirds["closed_before"]
    assert outcomes.get("held:relinked") == thirds["held"]
    racing = {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("racing:")}
    assert set(racing) <= {"relinked", "ENOENT"}
    assert sum(racing.values()) == thirds["racing"]
    assert res["concurrent"] == {"winners_per_round": {"1": 30}, "loser_errno": {"EMLINK": 30},
                                 "violations": []}
    assert res["src_empty"] == []
    assert res["fsck"] == CLEAN_FSCK


ALLOWED_FUZZ_RESULTS = {"OK", "EINVAL", "ENAMETOOLONG", "EILSEQ", "EBADF", "ENOTDIR", "EMEDIUMTYPE", "EMLINK",
                        "EXDEV", "ENOENT", "EEXIST", "EFAULT", "ENOTTY"}


def test_ioctl_fuzz(kmod_guest):
    res = scenario(kmod_guest, "fuzz")
    print("\n[%s] ioctl fuzz: %d requests, results %s" % (kmod_guest[0], res["requests"], res["results"]))
    assert sum(res["results"].values()) == FUZZ_REQUESTS
    assert set(res["results"]) <= ALLOWED_FUZZ_RESULTS
    for expected in ("EFAULT", "ENOTTY", "EINVAL", "EBADF", "EXDEV", "EMEDIUMTYPE", "EMLINK"):
        assert res["results"].get(expected, 0) > 0, expected


def test_unload_refused_while_in_use_then_idle(kmod_guest):
    guest = kmod_guest[1]
    busy = guest.run(
        "python3 -c 'import os, subprocess; fd = os.open(\"/dev/frelink\", os.O_RDWR); "
        "r = subprocess.run([\"rmmod\", \"frelink\"]); print(\"rc\", r.returncode)'", check=False)
    assert "rc 1" in busy.stdout, busy.stdout + busy.stderr
    assert "in use" in busy.stderr
    guest.run("test -e /sys/module/frelink")
    guest.run("rmmod frelink")
    assert guest.run("test -e /sys/module/frelink || test -e /dev/frelink", check=False).returncode == 1
    guest.run("insmod %s/frelink.ko && test -c /dev/frelink" % REMOTE)
    assert guest.run("stat -c %a /dev/frelink").stdout.strip() == "600"


def test_no_oops_or_warning(kmod_guest):
    """Last: nothing in dmesg or on the serial console after all of the above."""
    guest = kmod_guest[1]
    dmesg = guest.run("dmesg").stdout
    assert not OOPS.findall(dmesg), dmesg[-6000:]
    console = guest.console_log()
    assert not OOPS.findall(console), console[-6000:]
    assert "frelink: pid" in dmesg  # the relinks were logged, so this is the right log


def _run_with_variant(kmod_guest, tmp_path, name, flag, scenario):
    """Result of payload SCENARIO with the module built with -DFLAG=1 loaded in place of the
    real one (a negative control), which is loaded again afterwards."""
    suite, guest = kmod_guest[0], kmod_guest[1]
    source = tmp_path / ("kmod-" + name)
    shutil.copytree(REPO / "kmod", source)
    module = harness.build_module(suite, source, make_args=("KCFLAGS=-D%s=1" % flag,))
    guest.run("mkdir -p %s/%s" % (REMOTE, name))
    guest.put(str(module), "%s/%s/frelink.ko" % (REMOTE, name))
    guest.run("rmmod frelink && insmod %s/%s/frelink.ko" % (REMOTE, name))
    try:
        proc = guest.run("cd %s && python3 kmod_suite.py %s" % (REMOTE, scenario), timeout=600)
    finally:
        guest.run("rmmod frelink; insmod %s/frelink.ko" % REMOTE)
    return json.loads(proc.stdout)[scenario]


def test_btrfs_check_catches_a_relink_without_commit(kmod_guest, tmp_path):
    """Negative control for the btrfs fsck checks above: the same module built
    without its transaction commit (docs/kmod.md) leaves a name without inode
    ref, and btrfs check says so.  Runs after the oops check on purpose."""
    res = _run_with_variant(kmod_guest, tmp_path, "negative", "FRELINK_TEST_SKIP_BTRFS_COMMIT",
                            "btrfs_negative_control")
    assert res["by_fd"] == "OK", res
    assert res["fsck"]["rc"] != 0
    assert "no inode ref" in res["fsck"]["output"], res["fsck"]["output"]


def test_race_test_catches_an_unlocked_linkable(kmod_guest, tmp_path):
    """Negative control for the race test: the module built with the scheme of
    0.1.0 (I_LINKABLE set before vfs_link(), outside the inode lock, window
    widened to 2 ms) lets the holder's linkat() name a file that frelink then
    fails to relink.  Runs after the oops check on purpose."""
    suite = kmod_guest[0]
    res = _run_with_variant(kmod_guest, tmp_path, "negative-race", "FRELINK_TEST_UNLOCKED_LINKABLE",
                            "race:ext4:20:50")
    print("\n[%s] negative control race outcomes: %s" % (suite, res["outcomes"]))
    assert "exception" not in res, res
    locked_named = sum(v for k, v in res["outcomes"].items() if k.startswith("locked:") and "linkat=OK" in k)
    assert locked_named > 0, res["outcomes"]
    assert res["violations"], res
