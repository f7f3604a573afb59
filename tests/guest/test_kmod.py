"""The frelink kernel module, proven in real Debian guests (5.10, 6.1, 6.12, 7.x).

One guest boot per suite for this whole module: the module is built in the
suite's chroot, loaded in the guest, and tests/guest/payload/kmod_suite.py
runs every scenario there once and returns JSON; the tests below assert on
exact results.  See docs/kmod.md.
"""

import dataclasses
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

import harness
from role_run import run_playbook

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = REPO / "tests" / "guest" / "payload" / "kmod_suite.py"
KMOD_ABI = REPO / "plugins" / "module_utils" / "_frelink" / "kmod_abi.py"
REMOTE = "/root/frelink-kmod"
RELINK_FILESYSTEMS = ("ext4", "ext4-orphan_file", "xfs", "btrfs", "tmpfs")
STRESS = {"ext4": 240, "btrfs": 60}
OVERLAY_BASES = ("ext4", "xfs")
RACE_FILESYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs")
FREEZE_FILESYSTEMS = ("ext4", "xfs", "btrfs")
TMPFILE_FILESYSTEMS = ("ext4", "xfs")
RACE_ROUNDS, RACE_LOCKED_ROUNDS = 800, 200  # 1000 rounds per filesystem
FUZZ_REQUESTS = 3000
DEBUG_MEM_MB = 3072
# kasan_multi_shot: every KASAN report, not only the first (a negative control runs
# after the suite); no5lvl: with QEMU's -cpu max the kernel switches to 5-level paging
# during boot, and KASAN 7.2 then reports every access to the direct map as a wild
# access (seen at 0.0098 s, before the module exists): 4-level paging, as on most hosts;
# log_buf_len: the boot messages stay in dmesg of a restored guest (checked below)
DEBUG_CMDLINE = "kasan_multi_shot no5lvl log_buf_len=8M"
# any report of the kernel's own checkers (lockdep, KASAN, KFENCE, DEBUG_LIST and
# DEBUG_OBJECTS, refcount_t, the hung-task and soft-lockup detectors)
OOPS = re.compile(r"Oops|BUG:|WARNING:|Call Trace|general protection|KASAN|KFENCE:|UBSAN|refcount_t:|"
                  r"ODEBUG:|list_add corruption|list_del corruption|possible circular locking|"
                  r"possible recursive locking|inconsistent lock state|suspicious RCU usage|"
                  r"blocked for more than|soft lockup|Kernel panic|RIP:")


# The kernels beyond harness.SUITES (bullseye's 5.10, trixie-backports' 7.3) cost an
# image and a boot each: `make test` runs these scenarios there, `make test-kernels`
# (FRELINK_KERNELS=all) every one.
EXTRA_KERNEL_SCENARIOS = ("relink:ext4", "refusals", "tmpfile:ext4", "held")
ALL_KERNELS = os.environ.get("FRELINK_KERNELS") == "all"

# lockdep and KASAN slow a TCG guest down several times: fewer rounds there
DEBUG_ROUNDS = {"stress": {"ext4": 30, "btrfs": 15}, "race": (60, 20)}
HOSTILE_REQUESTS = 10000


@dataclasses.dataclass
class KmodGuest:
    """A guest with the module loaded and every payload scenario run once."""

    label: str                # the suite, or "debug" for the debug kernel
    suite: str                # whose image and chroot
    guest: harness.Guest
    results: dict
    stress: dict
    race: tuple
    kernel_tree: str = None   # the debug kernel's tree (chroot path), else the suite's headers
    partial: bool = False     # only EXTRA_KERNEL_SCENARIOS ran (see above)
    not_here: dict = dataclasses.field(default_factory=dict)  # scenario: why this kernel cannot

    def build(self, source, make_args=()):
        return harness.build_module(self.suite, source, make_args=make_args, kernel_tree=self.kernel_tree)


def _boot(label):
    """(guest, kernel_tree, stress, race) for LABEL, not started yet."""
    if label != "debug":
        return harness.Guest(label), None, STRESS, (RACE_ROUNDS, RACE_LOCKED_ROUNDS)
    kernel = harness.debug_kernel()
    print("\n[debug] kernel %s (built from linux-source %s, one-time build %.0f s)" % (
        kernel.release, kernel.source_version, kernel.build_seconds))
    # its boot takes ~6 min under TCG: a saved booted state of its own after the first
    guest = harness.Guest(kernel.suite, mem_mb=DEBUG_MEM_MB, kernel=(kernel.bzimage, None),
                          kernel_cmdline_extra=DEBUG_CMDLINE, snapshot="debug")
    return guest, kernel.tree, DEBUG_ROUNDS["stress"], DEBUG_ROUNDS["race"]


@pytest.fixture(scope="module", params=harness.KERNEL_SUITES + ("debug",))
def kmod_guest(request):
    label = request.param
    guest, kernel_tree, stress, race = _boot(label)
    suite = guest.suite
    module = harness.build_module(suite, REPO / "kmod", kernel_tree=kernel_tree)
    with guest:
        guest.run("mkdir -p %s" % REMOTE)
        for local in (module, PAYLOAD, KMOD_ABI):
            guest.put(str(local), "%s/%s" % (REMOTE, local.name))
        if label == "debug":
            _assert_judges_live(guest, "before the module is loaded", boot=True)
        guest.run("dmesg -C; insmod %s/frelink.ko" % REMOTE)
        scenarios = ["relink:" + fs for fs in RELINK_FILESYSTEMS]
        scenarios += ["refusals", "unsupported", "loop", "loop_reuse", "dir_delegation", "lsm_enoent", "mapped_and_exe", "held"]
        scenarios += ["stress:%s:%d" % item for item in stress.items()]
        scenarios += ["overlay:" + fs for fs in OVERLAY_BASES]
        scenarios += ["held_overlay:ext4", "held_split", "held_threads", "held_fuse"]
        scenarios += ["not_allowed", "ro_source", "log_escape"]
        scenarios += ["freeze:" + fs for fs in FREEZE_FILESYSTEMS]
        scenarios += ["race:%s:%d:%d" % ((fs,) + race) for fs in RACE_FILESYSTEMS]
        scenarios += ["tmpfile:" + fs for fs in TMPFILE_FILESYSTEMS]
        scenarios += ["protected_hardlinks", "readonly_source"]
        scenarios += ["fuzz"]
        if label == "debug":
            scenarios += ["hostile"]
        # FRELINK_KMOD_ONLY="tmpfile:ext4 ...": only these scenarios (for a red run
        # or while working on one scenario); the tests of the others skip
        only = os.environ.get("FRELINK_KMOD_ONLY", "").split()
        if only:
            scenarios = [s for s in scenarios if s in only]
        partial = label in harness.debian.EXTRA_KERNEL_SUITES and not ALL_KERNELS
        if partial:
            scenarios = [s for s in scenarios if s in EXTRA_KERNEL_SCENARIOS]
        not_here = {}
        # made and mounted as the scenario does (e2fsprogs 1.47, kernel 5.15); 7.3 no
        # longer lists it in /sys/fs/ext4/features
        if guest.run("f=$(mktemp) d=$(mktemp -d); truncate -s 64M $f && mkfs.ext4 -q -F -O orphan_file $f "
                     "&& mount -o loop $f $d && umount $d; rc=$?; rm -f $f; rmdir $d; exit $rc",
                     check=False).returncode:
            not_here["relink:ext4-orphan_file"] = "no ext4 with orphan_file here (e2fsprogs 1.47, kernel 5.15)"
        # the race's immutable directory needs chattr +i, which tmpfs has from 6.0 on
        if guest.run("d=$(mktemp -d /dev/shm/attr.XXXXXX) && lsattr -d $d; rc=$?; rmdir $d; exit $rc",
                     check=False).returncode:
            not_here["race:tmpfs:%d:%d" % race] = "tmpfs has no file attributes (chattr +i) in this kernel (6.0)"
        scenarios = [s for s in scenarios if s not in not_here]
        if "held_fuse" in scenarios:
            guest.install_debs(["bindfs"])
        proc = guest.run("cd %s && python3 kmod_suite.py %s --fuzz %d --hostile %d" % (
            REMOTE, " ".join(shlex.quote(s) for s in scenarios), FUZZ_REQUESTS, HOSTILE_REQUESTS),
            timeout=3600)
        try:
            results = json.loads(proc.stdout)
        except ValueError:
            pytest.fail("%s: the payload printed no JSON:\n%s\n%s" % (label, proc.stdout[-3000:], proc.stderr[-3000:]))
        print("\n[%s] scenario seconds: %s" % (label, {k: v.get("seconds") for k, v in results.items()}))
        yield KmodGuest(label, suite, guest, results, stress, race, kernel_tree, partial, not_here)


def _assert_judges_live(guest, when, boot=False):
    """On the debug kernel: lockdep still on (one splat turns it off for good), KFENCE
    sampling, and with boot=True (before the module is loaded and dmesg cleared) KASAN
    and KFENCE initialised and no report since boot, so that their silence means something."""
    stats = guest.run("cat /proc/lockdep_stats").stdout
    assert re.search(r"debug_locks:\s+1$", stats, re.M), "lockdep is off %s:\n%s\n%s" % (
        when, stats, guest.console_log()[-6000:])
    _assert_kfence_samples(guest)
    if boot:
        dmesg = guest.run("dmesg").stdout + guest.console_log()
        assert "KernelAddressSanitizer initialized" in dmesg, when
        assert "kfence: initialized" in dmesg, when
        assert not OOPS.findall(dmesg), "a kernel report %s:\n%s" % (when, dmesg[-6000:])


def _assert_kfence_samples(guest):
    """KFENCE is on, has sampled allocations and found nothing (its debugfs statistics)."""
    stats = guest.run("mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
                      "cat /sys/kernel/debug/kfence/stats").stdout
    assert re.search(r"^enabled: 1$", stats, re.M), stats
    allocations = re.search(r"^total allocations: (\d+)$", stats, re.M)
    assert allocations and int(allocations.group(1)) > 0, stats
    assert re.search(r"^total bugs: 0$", stats, re.M), stats


def scenario(kmod_guest, name):
    if name in kmod_guest.not_here:
        pytest.skip("%s: %s" % (kmod_guest.label, kmod_guest.not_here[name]))
    if name not in kmod_guest.results and os.environ.get("FRELINK_KMOD_ONLY"):
        pytest.skip("%s not in FRELINK_KMOD_ONLY" % name)
    if name not in kmod_guest.results and kmod_guest.partial:
        pytest.skip("%s: %s runs on %s in make test-kernels" % (kmod_guest.label, name, kmod_guest.label))
    res = kmod_guest.results[name]
    assert "exception" not in res, "%s: %s raised in the guest:\n%s" % (kmod_guest.label, name, res["exception"])
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
    guest = kmod_guest.guest
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


@pytest.mark.parametrize("fs", FREEZE_FILESYSTEMS)
def test_frozen_filesystem_is_refused_at_once(kmod_guest, fs):
    """A relink on a frozen filesystem neither sleeps until the thaw nor holds
    the module's lock: EBUSY at once, while a relink elsewhere goes through."""
    res = scenario(kmod_guest, "freeze:" + fs)
    assert res["frozen_by_fd"] == "EBUSY"
    assert res["frozen_by_inode"] == "EBUSY"
    assert res["other_fs_while_frozen"] == "OK"
    assert res["still_deleted"] == 0
    assert res["listing_unchanged"] is True
    assert res["after_thaw_by_fd"] == "OK"
    assert res["content_equal"] is True
    assert res["fsck"] == CLEAN_FSCK


@pytest.mark.parametrize("fs", RACE_FILESYSTEMS)
def test_race_with_the_holders_own_linkat(kmod_guest, fs):
    res = scenario(kmod_guest, "race:%s:%d:%d" % ((fs,) + kmod_guest.race))
    print("\n[%s] race %s: %s in %s s" % (kmod_guest.label, fs, res["outcomes"], res["race_seconds"]))
    assert res["violations"] == []
    assert sum(res["outcomes"].values()) == sum(kmod_guest.race)
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


def test_loop_inode_number_reused(kmod_guest):
    """By (dev, ino) alone a detached loop's recorded identity names whatever
    deleted file got the freed inode number next; the generation tells them apart."""
    res = scenario(kmod_guest, "loop_reuse")
    assert res["number_reused"] is True, res
    # the request restore makes from the facts of the detached loop's file
    assert (res["by_recorded_identity"], res["listing_after_reuse"]) == ("ESTALE", []), res
    assert res["identify_matches_getversion"] is True
    assert res["identify_refusals"] == {"flags_set": "EINVAL", "generation_set": "EINVAL", "reserved_set": "EINVAL",
                                        "dev_zero": "EINVAL", "not_in_memory": "ENOENT", "dev_mismatch": "EXDEV",
                                        "bad_fd": "EBADF", "not_a_dir": "ENOTDIR"}
    assert res["wrong_generation"] == "ESTALE"
    assert res["listing_after_wrong"] == []
    assert res["right_generation"] == "OK"
    assert res["relinked_same_inode"] is True
    assert res["relinked_generation"] is True
    assert res["fsck"] == CLEAN_FSCK


# kernels with directory delegations (F_SETDELEG, 6.19 and later)
DIR_DELEGATION_SUITES = ("sid", "trixie-backports")


def test_directory_delegation_broken_before_link(kmod_guest):
    """7.x vfs_link() breaks the directory's delegation before it adds a name;
    so does a relink (5.10, 6.1 and 6.12 have no directory delegations: EINVAL)."""
    res = scenario(kmod_guest, "dir_delegation")
    assert res["relink"] == "OK"
    assert res["listing"] == ["restored"]
    assert res["fsck"] == CLEAN_FSCK
    if kmod_guest.suite not in DIR_DELEGATION_SUITES:
        assert res["setdeleg"] == "EINVAL"
        pytest.skip("%s: no directory delegations (F_SETDELEG: EINVAL)" % kmod_guest.suite)
    assert res["setdeleg"] == "OK"
    assert res["broken_before_link"] is True, res


# Debian's kernels that run the BPF LSM by default (CONFIG_LSM has "bpf"); bullseye's 5.10 has
# CONFIG_BPF_LSM but not in its default list, so an attached program is never called there
BPF_LSM_SUITES = ("bookworm", "trixie", "sid", "trixie-backports")


def _needs_bpf_lsm(kmod_guest, res):
    active = "bpf" in res["active_lsms"]
    if kmod_guest.label != "debug":  # built without CONFIG_SECURITY (harness/debug_kernel.py)
        assert active == (kmod_guest.suite in BPF_LSM_SUITES), (kmod_guest.suite, res["active_lsms"])
    if not active:
        pytest.skip("%s: the BPF LSM is not among this boot's security modules %s" % (
            kmod_guest.label, res["active_lsms"]))


def test_bpf_lsm_enoent_refuses_linkat(kmod_guest):
    """The measurement below means something only if the security module's
    ENOENT reaches linkat() while the program is attached, and not after."""
    res = scenario(kmod_guest, "lsm_enoent")
    _needs_bpf_lsm(kmod_guest, res)
    assert res["attached"] == "OK"
    assert res["linkat_live"] == "ENOENT"
    assert res["linkat_live_after_detach"] == "OK"
    assert res["fsck"] == CLEAN_FSCK


@pytest.mark.xfail(strict=True, reason="known floor (docs/kmod.md, 'What remains'): an inode_link hook's ENOENT "
                                       "looks like the stop at the link count, and security_inode_link() is not "
                                       "exported; strict, so a fix turns this into a failure to update")
def test_bpf_lsm_enoent_is_not_overridden(kmod_guest):
    res = scenario(kmod_guest, "lsm_enoent")
    _needs_bpf_lsm(kmod_guest, res)
    assert res["attached"] == "OK"
    assert (res["relink_by_fd"], res["listing_under_lsm"]) == ("ENOENT", ["live"])


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
    cycles = kmod_guest.stress[fs]
    res = scenario(kmod_guest, "stress:%s:%d" % (fs, cycles))
    outcomes = res["outcomes"]
    print("\n[%s] stress %s outcomes: %s" % (kmod_guest.label, fs, outcomes))
    assert res["violations"] == []
    assert sum(outcomes.values()) == cycles
    thirds = {mode: -(-(cycles - i) // 3) for i, mode in enumerate(("closed_before", "held", "racing"))}
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


ALLOWED_FUZZ_RESULTS = {"OK", "EBUSY", "EINVAL", "ENAMETOOLONG", "EILSEQ", "EBADF", "ENOTDIR", "EMEDIUMTYPE", "EMLINK",
                        "EXDEV", "ENOENT", "EEXIST", "EFAULT", "ENOTTY", "EOVERFLOW"}


def test_ioctl_fuzz(kmod_guest):
    res = scenario(kmod_guest, "fuzz")
    print("\n[%s] ioctl fuzz: %d requests, results %s" % (kmod_guest.label, res["requests"], res["results"]))
    assert sum(res["results"].values()) == FUZZ_REQUESTS
    assert set(res["results"]) <= ALLOWED_FUZZ_RESULTS
    for expected in ("EFAULT", "ENOTTY", "EINVAL", "EBADF", "EXDEV", "EMEDIUMTYPE", "EMLINK"):
        assert res["results"].get(expected, 0) > 0, expected
    # the listing's requests reached every outcome it has, and no other
    assert set(res["held_results"]) == {"OK", "EINVAL", "EFAULT", "EOVERFLOW"}, res["held_results"]


def test_listing_of_held_deleted_files(kmod_guest):
    """FRELINK_IOC_HELD lists exactly what an independent /proc reader finds (fds on ext4, xfs,
    btrfs and tmpfs, shared mappings only, deleted cwd and root, O_TMPFILE; every stat field,
    the path, and an fd's open flags and position), and nothing that is not a deleted file; small buffers resume; each
    refusal has its errno; nothing changes."""
    res = scenario(kmod_guest, "held")
    print("\n[%s] held listing: %d deleted handles of the holders, %d records in all, %d processes, %d fds" % (
        kmod_guest.label, res["kernel_deleted"], res["records_total"], res["processes"], res["fds"]))
    assert res["missing"] == [] and res["extra"] == []
    # 3 holders: 4 filesystems + 1 O_TMPFILE by fd, 2 mappings, cwd, root
    assert res["kinds"] == {"fd": 15, "mmap": 6, "cwd": 3, "root": 3}
    assert res["kernel_deleted"] == res["oracle_deleted"] == 27
    assert res["paths_named_deleted_not_listed"] == [] and res["pseudo_files_listed"] == []
    # each holder's descriptors sit at their own offsets, the first one appends: as fdinfo says
    assert len(res["fd_positions"]) > 3 and res["fd_appending"] == 3, (res["fd_positions"], res["fd_appending"])
    assert res["second_name_listed_nlink"] == [1]  # the name it was opened by is gone, another is not
    assert abs(res["processes"] - res["proc_pids"]) <= 3, (res["processes"], res["proc_pids"])
    assert abs(res["fds"] - res["proc_fds"]) <= 20, (res["fds"], res["proc_fds"])
    assert res["small_buffer_same"] is True and res["kinds_fd_only"] == ["fd"]
    assert res["tiny_buffer"][0] == "EOVERFLOW" and res["tiny_buffer_next_pid_is_holder"] is True
    assert res["past_last_pid"] == ["OK", 0, 0, 0, 0]
    assert res["null_buffer"] == "EFAULT"
    assert res["refusals"] == {"no_kinds": "EINVAL", "unknown_kind": "EINVAL", "reserved": "EINVAL",
                               "negative_pid": "EINVAL", "huge_buffer": "EINVAL", "bad_request_pointer": "EFAULT"}
    assert res["without_cap_sys_ptrace"] == "EPERM"
    assert res["unchanged"] is True and res["after_exit"] == 0
    assert res["fsck"] == {"ext4": 0, "xfs": 0, "btrfs": 0}


def test_listing_of_overlay_mappings(kmod_guest):
    """Mappings of files deleted in an overlay's merged dir are listed as /proc shows them
    (6.7 and later keep the layer's real path in the mapped file): the merged path and the
    overlay's st_dev, for a file still present in the lower layer and for an upper-only one."""
    res = scenario(kmod_guest, "held_overlay:ext4")
    assert res["lower_still_named"] is True and res["upper_gone"] is True
    assert res["missing"] == [] and res["extra"] == [], (res["missing"], res["extra"], res["kernel"], res["proc"])
    assert sorted(res["oracle"]) == ["lower", "upper"], (res["oracle"], res["kernel"], res["proc"])
    assert all(same_dev for _path, same_dev, _nlink in res["oracle"].values()), res["oracle"]
    # each holder: its mapping and the descriptor Python's mmap keeps
    assert [k[:2] for k in res["kernel"]] == [["lower", "fd"], ["lower", "mmap"], ["upper", "fd"], ["upper", "mmap"]]
    assert all(k[3] for k in res["kernel"]), res["kernel"]  # the overlay's st_dev


def test_listing_resumes_inside_a_process(kmod_guest):
    """A process whose records (5,000 descriptors and 200 mappings of a deleted file with a
    ~3,000-byte path) far exceed a 64 KiB buffer is listed with that buffer, the calls
    resuming inside it: every record exactly once, in order; bad resume points refused;
    a caller without FRELINK_HELD_SPLIT still gets EOVERFLOW for it."""
    res = scenario(kmod_guest, "held_split")
    assert "error" not in res, res
    assert res["path_len"] > 2900
    assert res["fds_listed"] == 5000 and res["fds_right"] is True and res["fds_more_than_once"] == 0
    assert res["maps_listed"] == 200 and res["maps_more_than_once"] == 0
    assert res["order"] is True and res["paths"] is True
    processes, proc = res["processes_vs_proc"]
    assert abs(processes - proc) <= 3, res["processes_vs_proc"]  # each process counted once
    assert res["without_split"] == "EOVERFLOW"
    assert res["refusals"] == dict.fromkeys(res["refusals"], "EINVAL") and len(res["refusals"]) == 6
    assert res["resume_middle"] == ["OK", True, True]
    assert res["record_too_large"] == ["EOVERFLOW", True, 1, True]


def test_listing_of_threads_own_tables_and_zombie_leaders(kmod_guest):
    """A thread's own fd table (unshare(CLONE_FILES)) and a process whose main thread
    exited are listed as /proc/PID/task/TID shows them, under the thread group's pid."""
    res = scenario(kmod_guest, "held_threads")
    assert res["zombie_leader_state"] == "Z" and res["proc_fd_of_zombie_leader"] == 0
    assert res["missing"] == [] and res["extra"] == [], res
    assert res["listed"] == [
        ["unshared", "fd", "own (deleted)", True],      # in the thread's own table: its tid
        ["unshared", "fd", "shared (deleted)", False],  # the process's table
        ["unshared", "fd", "shared (deleted)", True],   # copied into the thread's table
        ["zombie_leader", "fd", "orphaned (deleted)", True],  # /proc/PID/task/TID/fd only
        ["zombie_leader", "mmap", "mapped (deleted)", False],
    ], res["listed"]


def test_listing_does_not_wait_for_a_stopped_fuse_daemon(kmod_guest):
    """A deleted file held on FUSE (attr_timeout=0) whose daemon is stopped: the listing
    returns at once with the cached attributes instead of waiting for the daemon."""
    res = scenario(kmod_guest, "held_fuse")
    assert res["mounted"] is True, res
    assert res["unlinked_in_source"] is True
    assert res["listing"] == "RETURNED", res
    assert res["records"] == [["/mnt/frelink-held-fuse/victim (deleted)", 0, 8192]], res


def test_unload_refused_while_in_use_then_idle(kmod_guest):
    guest = kmod_guest.guest
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


def _first_report(log):
    """The first report of LOG and what follows it (the tail would show only relinks
    logged after it)."""
    start = max(OOPS.search(log).start() - 500, 0)
    return log[start:start + 8000]


def test_no_oops_or_warning(kmod_guest):
    """Last: nothing in dmesg or on the serial console after all of the above."""
    guest = kmod_guest.guest
    dmesg = guest.run("dmesg").stdout
    assert not OOPS.findall(dmesg), _first_report(dmesg)
    console = guest.console_log()
    assert not OOPS.findall(console), _first_report(console)
    assert "frelink: pid" in dmesg  # the relinks were logged, so this is the right log


def test_kernel_checkers_were_on(kmod_guest):
    """The silence above means something: on the debug kernel lockdep is still on
    after the whole suite (a single splat turns it off) and KASAN and KFENCE ran;
    on Debian's kernels that have KFENCE (trixie's and sid's; Debian builds it in with
    sampling off) it sampled."""
    guest = kmod_guest.guest
    if kmod_guest.label == "debug":
        _assert_judges_live(guest, "after the kmod suite")
        return
    env = guest.env
    if not harness.image.kernel_config_has(env.rootfs / "boot" / ("config-" + env.kernel_release),
                                           "CONFIG_KFENCE=y"):
        # Debian 12's 6.1 is built without KFENCE: nothing to turn on
        assert "kfence." not in guest.run("cat /proc/cmdline").stdout
        assert guest.run("test -e /sys/module/kfence", check=False).returncode == 1
        return
    assert guest.run("cat /sys/module/kfence/parameters/sample_interval").stdout.strip() == "100"
    _assert_kfence_samples(guest)


ALLOWED_HOSTILE_RESULTS = ALLOWED_FUZZ_RESULTS | {"EOPNOTSUPP", "EROFS", "ESTALE", "device:ENOENT", "device:ENODEV",
                                                  "device:ENXIO"}


def _stock_kernels_only(kmod_guest):
    if kmod_guest.label == "debug":
        pytest.skip("a control of a test on Debian's kernels, proven there; the debug kernel has its own")
    if kmod_guest.partial:
        pytest.skip("%s: the controls run there in make test-kernels" % kmod_guest.label)


def _debug_kernel_only(kmod_guest):
    if kmod_guest.label != "debug":
        pytest.skip("runs on the debug kernel only (lockdep, KASAN, KFENCE judge it there)")


def test_hostile_fuzzer(kmod_guest):
    """>= 10,000 requests from three threads while others close and dup2 their
    descriptors, unlink and re-create the names, freeze the filesystems,
    lazily unmount a tmpfs and unload the module; no kernel report (see
    test_no_oops_or_warning), no stuck thread, nothing replaced, fsck clean,
    and the module unloads cleanly at the end."""
    _debug_kernel_only(kmod_guest)
    res = scenario(kmod_guest, "hostile")
    print("\n[debug] hostile fuzzer: %d requests in %s s\n  outcomes %s\n  kinds %s\n  listings %s\n"
          "  other threads %s" % (res["requests"], res["seconds_fuzzing"], res["outcomes"], res["kinds"],
                                  res["held_outcomes"], res["acts"]))
    assert res["thread_errors"] == []
    assert res["stuck_threads"] == []
    assert res["requests"] >= 10000
    assert set(res["outcomes"]) <= ALLOWED_HOSTILE_RESULTS, res["outcomes"]
    for expected in ("OK", "EMLINK", "EEXIST", "EBADF", "EBUSY", "EINVAL", "EFAULT", "ENOTTY", "EXDEV", "ESTALE"):
        assert res["outcomes"].get(expected, 0) > 0, expected
    # the paths of issue #24 too: resumed listings, FRELINK_IOC_IDENTIFY, BY_INODE with a generation
    for kind in ("held_split", "identify", "by_generation"):
        assert res["kinds"].get(kind, 0) > 0, (kind, res["kinds"])
    # listings that walked every process while those processes closed, exited and unmounted
    assert res["held_outcomes"].get("OK", 0) > 0, res["held_outcomes"]
    for act in ("close", "dup2", "unlink", "create", "freeze", "umount_lazy", "unload:EAGAIN", "spawn"):
        assert res["acts"].get(act, 0) > 0, act
    assert res["sentinels_replaced"] == []
    assert res["fsck"] == {fs: CLEAN_FSCK for fs in ("ext4", "xfs", "btrfs")}
    assert res["module_refcnt"] == "0"
    assert res["rmmod"] == 0 and res["unloaded_at_end"] is True


def _run_with_variant(kmod_guest, tmp_path, name, flag, scenario):
    """Result of payload SCENARIO with the module built with -DFLAG=1 loaded in place of the
    real one (a negative control), which is loaded again afterwards."""
    guest = kmod_guest.guest
    source = tmp_path / ("kmod-" + name)
    shutil.copytree(REPO / "kmod", source)
    module = kmod_guest.build(source, make_args=("KCFLAGS=-D%s=1" % flag,))
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
    _stock_kernels_only(kmod_guest)
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
    _stock_kernels_only(kmod_guest)
    suite = kmod_guest.label
    res = _run_with_variant(kmod_guest, tmp_path, "negative-race", "FRELINK_TEST_UNLOCKED_LINKABLE",
                            "race:ext4:20:50")
    print("\n[%s] negative control race outcomes: %s" % (suite, res["outcomes"]))
    assert "exception" not in res, res
    locked_named = sum(v for k, v in res["outcomes"].items() if k.startswith("locked:") and "linkat=OK" in k)
    assert locked_named > 0, res["outcomes"]
    assert res["violations"], res


def _new_console(kmod_guest, since):
    return kmod_guest.guest.console_log()[since:]


def test_lockdep_catches_a_lock_order_inversion(kmod_guest, tmp_path):
    """Negative control for lockdep: the module built to take the source inode's
    lock, then frelink_mutex, after a relink (the reverse of a relink's order).
    Before the KASAN control: a KASAN report taints the kernel, which turns
    lockdep off, as does this splat (KASAN keeps working)."""
    _debug_kernel_only(kmod_guest)
    stats = kmod_guest.guest.run("cat /proc/lockdep_stats").stdout
    assert re.search(r"debug_locks:\s+1$", stats, re.M), "lockdep was turned off before its control:\n" + stats
    since = len(kmod_guest.guest.console_log())
    res = _run_with_variant(kmod_guest, tmp_path, "negative-lockdep", "FRELINK_TEST_LOCK_INVERSION", "log_escape")
    assert res["by_fd"] == "OK", res
    report = _new_console(kmod_guest, since)
    assert "WARNING: possible circular locking dependency detected" in report, report[-6000:]
    assert "frelink_mutex" in report and "frelink_test_judges" in report, report[-6000:]


def test_kasan_catches_a_use_after_free(kmod_guest, tmp_path):
    """Negative control for KASAN: the module built to read a freed copy of the
    name after a relink.  Last of all (see the lockdep control)."""
    _debug_kernel_only(kmod_guest)
    since = len(kmod_guest.guest.console_log())
    res = _run_with_variant(kmod_guest, tmp_path, "negative-kasan", "FRELINK_TEST_USE_AFTER_FREE", "log_escape")
    assert res["by_fd"] == "OK", res
    report = _new_console(kmod_guest, since)
    assert "BUG: KASAN: slab-use-after-free in frelink_test_judges" in report, report[-6000:]


@pytest.mark.parametrize("fs", TMPFILE_FILESYSTEMS)
def test_tmpfile_excl_never_linked(kmod_guest, fs):
    """O_TMPFILE | O_EXCL: vfs_tmpfile() promises it never gets a name; frelink
    keeps the promise (ENOLINK, both forms, nothing changed) and still relinks
    an ordinary deleted file beside it.  Issue #24."""
    res = scenario(kmod_guest, "tmpfile:" + fs)
    assert res["excl_nlink"] == 0
    assert res["excl_linkat"] == "ENOENT"
    assert res["excl_by_fd"] == "ENOLINK"
    assert res["excl_by_own_fd"] == "ENOLINK"
    assert res["excl_by_inode"] == "ENOLINK"
    assert res["excl_nlink_after"] == 0
    assert res["excl_linkat_after"] == "ENOENT"
    assert res["listing_after_excl"] == []
    assert res["ordinary_by_fd"] == "OK"
    assert res["ordinary_by_inode"] == "OK"
    # a plain O_TMPFILE is linked as linkat() links it
    assert res["plain_by_fd"] == "OK"
    assert res["plain_nlink"] == 1
    assert res["plain_same_inode"] is True
    # linked by its holder, deleted again: refused like O_EXCL (see docs/kmod.md)
    assert res["again_linkat"] == "OK"
    assert res["again_by_fd"] == "ENOLINK"
    assert res["again_nlink"] == 0
    assert res["listing"] == ["ordinary", "ordinary2", "plain"]
    assert res["fsck"] == CLEAN_FSCK


def test_relink_needs_no_write_access_as_linkat(kmod_guest):
    """Review of issue #24: "RELINK accepts a descriptor opened without write
    access" -- so does linkat(): a caller that may not write the file (but
    owns it) links it, and relinks it by an O_RDONLY or O_PATH descriptor."""
    res = scenario(kmod_guest, "readonly_source")
    assert res["without_dac"] == {"open_for_write": "EACCES", "linkat_live": "OK", "by_fd_rdonly": "OK",
                                  "by_fd_o_path": "OK"}
    assert res["listing"] == ["live", "live-link", "restored", "restored2"]
    assert res["nlink"] == [1, 1]
    assert res["fsck"] == CLEAN_FSCK


def test_protected_hardlinks_as_may_linkat(kmod_guest):
    """RELINK needs no write access to the file (linkat() does not either), but
    may_linkat()'s fs.protected_hardlinks rule applies: another user's file,
    held read-only, is relinked only with CAP_FOWNER.  Issue #24."""
    res = scenario(kmod_guest, "protected_hardlinks")
    assert res["without_fowner"] == {"linkat_live": "EPERM", "by_fd": "EPERM", "by_inode": "EPERM"}
    assert res["nlink_after_refusals"] == [0, 0]
    assert res["listing_after_refusals"] == ["live"]
    assert res["root_by_fd"] == "OK"
    assert res["root_by_inode"] == "OK"
    assert res["listing"] == ["live", "restored", "restored2"]
    assert res["fsck"] == CLEAN_FSCK


CONTAINER_MAPS_SETUP = r"""
set -eu
C=/root/frelink-ctr
rm -rf $C && mkdir -p $C/lower $C/upper $C/work $C/merged
head -c 65536 /dev/urandom > $C/lower/liblower.so
cat > $C/hold.py <<'PY'
import mmap, os, sys, time
merged = sys.argv[1]
with open(os.path.join(merged, "libupper.so"), "wb") as f:
    f.write(os.urandom(65536))
maps = []
for name in ("liblower.so", "libupper.so"):  # one still in the image's layer, one only in the upper
    path = os.path.join(merged, name)
    fd = os.open(path, os.O_RDONLY)
    maps.append(mmap.mmap(fd, 65536, prot=mmap.PROT_READ))
    os.close(fd)
    os.unlink(path)
open(sys.argv[2], "w").close()
while True:
    time.sleep(3600)
PY
setsid unshare -m -p -f --propagation private sh -c \
  "mount -t overlay overlay -o lowerdir=$C/lower,upperdir=$C/upper,workdir=$C/work $C/merged &&
   exec python3 $C/hold.py $C/merged $C/ready" </dev/null >/dev/null 2>&1 &
for i in $(seq 100); do [ -e $C/ready ] && break; sleep 0.2; done
pgrep -f "^python3 $C/hold.py"
"""


def _facts(guest, tmp_path, backend):
    text = ("- hosts: guest\n  gather_facts: false\n  tasks:\n"
            "    - frelink.frelink.frelink_facts: {backend: %s, limit: 0}\n      register: facts\n"
            "    - ansible.builtin.copy: {content: '{{ facts | to_json }}', dest: '%s'}\n"
            "      delegate_to: localhost\n" % (backend, tmp_path / ("facts-%s.json" % backend)))
    proc, out = run_playbook(guest, tmp_path, text, name="facts-%s.yml" % backend, timeout=600)
    assert proc.returncode == 0, out[-6000:]
    return json.loads((tmp_path / ("facts-%s.json" % backend)).read_text())["ansible_facts"]["frelink"]


def test_both_backends_agree_on_a_containers_deleted_mappings(kmod_guest, tmp_path):
    """A process in its own mount and pid namespace (a container) maps two files of its overlay
    root and deletes them in its merged view: backend=kernel (FRELINK_IOC_HELD) and
    backend=proc give the same facts, through Ansible.  Since 6.7 a mapping's f_path is the
    layer's real path; /proc uses file_user_path().  Issue #24."""
    guest = kmod_guest.guest
    pid = int(guest.run(CONTAINER_MAPS_SETUP, timeout=120).stdout.split()[-1])
    try:
        facts = {backend: _facts(guest, tmp_path, backend) for backend in ("kernel", "proc")}
    finally:
        guest.run("pkill -f '^python3 /root/frelink-ctr/hold.py'; rm -rf /root/frelink-ctr/ready", check=False)
    held = {}
    for backend, found in facts.items():
        assert found["scan"]["backend"] == backend
        held[backend] = sorted(
            (o["path"], o["fstype"], o["dev"], o["ino"], sorted((h["kind"], h["pid"]) for h in o["holders"]))
            for o in found["orphans"] if any(h.get("pid") == pid for h in o["holders"]))
    assert held["kernel"] == held["proc"], held
    # the upper-only file is deleted (its data is in the upper layer alone); the lower one still
    # has its name in the image's layer, so it is no orphan
    assert [entry[:2] for entry in held["proc"]] == [
        ("/root/frelink-ctr/merged/libupper.so", "overlay")], held
