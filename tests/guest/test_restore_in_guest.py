"""frelink_restore through Ansible in real Debian guests (bookworm 6.1, sid 7.x)
with the frelink kernel module loaded: every selector on ext4, xfs, btrfs and
tmpfs, idempotence, check mode, later writes, refusals, reflink, appended
copy, a loop-mounted deleted image, a holder in another mount namespace,
method auto falling back to a copy on FUSE (sshfs) and vfat (check mode predicting it)
and on a kernel refusal (append-only inode), an NFS silly-renamed file over
loopback NFS, playbooks/recover.yml (check and real), and the
module-not-loaded error.

One guest boot per suite: holders are started over SSH, then three
ansible-playbook runs (recover.yml --check, recover.yml, one generated
playbook with every other task, results registered and saved as JSON on the
controller); the tests below assert on those results.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from guest_payload import load_frelink

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
SUITES = ("bookworm", "sid")
FILESYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs")
BIN = Path(sys.executable).parent
WORK = "/root/frelink-restore"


SETUP = r"""
set -eu
W=%(work)s
mkdir -p $W/info /mnt/ext4 /mnt/xfs /mnt/btrfs /mnt/tmpfs /mnt/ns /mnt/loopmnt
truncate -s 256M $W/ext4.img; mkfs.ext4 -q -F $W/ext4.img >&2
truncate -s 320M $W/xfs.img; mkfs.xfs -q -f -m reflink=1 $W/xfs.img >&2
truncate -s 256M $W/btrfs.img; mkfs.btrfs -q -f $W/btrfs.img >&2
for fs in ext4 xfs btrfs; do mount -o loop -t $fs $W/$fs.img /mnt/$fs; done
mount -t tmpfs -o size=256m frelink-tmpfs /mnt/tmpfs
hold() {  # hold NAME PATH SIZE [MODE [PREFIX...]]
  name=$1 path=$2 size=$3 mode=${4:-idle}; shift 4 || shift $#
  setsid "$@" python3 $W/holder.py "$path" "$size" "$mode" $W/info/$name.json </dev/null >/dev/null 2>&1 &
}
for fs in ext4 xfs btrfs tmpfs; do
  hold path-$fs /mnt/$fs/bypath.dat 1048576
  hold src-$fs /mnt/$fs/bysrc.dat 1048576
  hold inode-$fs /mnt/$fs/byinode.dat 1048576
  hold check-$fs /mnt/$fs/check.dat 4096
done
hold reflink-btrfs /mnt/btrfs/clone.dat 16777216
hold reflink-xfs /mnt/xfs/clone.dat 16777216
hold refuse /mnt/ext4/refuse.dat 4096
hold append /mnt/ext4/growing.log 4194304 append
hold notloaded /mnt/ext4/notloaded.dat 4096
mkdir -p /mnt/ext4/recover /mnt/ext4/realdir
hold recover-a /mnt/ext4/recover/a.dat 65536
hold recover-b /mnt/ext4/recover/b.dat 65536
echo occupied > /mnt/ext4/occupied
ln -s /mnt/ext4/victim /mnt/ext4/planted
echo victim > /mnt/ext4/victim
ln -s /mnt/ext4/realdir /mnt/ext4/linkdir
# a holder in a private mount namespace, on a tmpfs only it sees
setsid unshare -m --propagation private sh -c \
  "mount -t tmpfs frelink-ns /mnt/ns && exec python3 $W/holder.py /mnt/ns/secret.dat 65536 idle $W/info/ns.json" \
  </dev/null >/dev/null 2>&1 &
# a loop-mounted image whose file is deleted
truncate -s 64M $W/disk.img; mkfs.ext4 -q -F $W/disk.img >&2
losetup -f --show $W/disk.img > $W/info/loopdev
mount -t ext4 $(cat $W/info/loopdev) /mnt/loopmnt
echo inside-the-image > /mnt/loopmnt/hello
stat -c '{"dev": %%d, "ino": %%i}' $W/disk.img > $W/info/loopimg.json
rm $W/disk.img
for i in $(seq 100); do
  [ $(ls $W/info/*.json | wc -l) -ge 25 ] && break
  sleep 0.2
done
python3 - <<'EOF'
import glob, json, os
out = {}
for p in glob.glob("%(work)s/info/*.json"):
    out[os.path.basename(p)[:-5]] = json.load(open(p))
out["loopdev"] = open("%(work)s/info/loopdev").read().strip()
print(json.dumps(out))
EOF
"""


# FUSE (sshfs to the guest itself: its removed-while-open files have link count 0;
# libfuse keeps their data under a .fuse_hidden name), vfat and NFS over loopback:
# filesystems the module does not relink on, and NFS's silly rename.
EXTRA_PACKAGES = ("sshfs", "nfs-kernel-server")
EXTRA_SETUP = r"""
set -eu
W=%(work)s
modprobe fuse 2>/dev/null || true
mkdir -p /mnt/ext4/fuse-backing /mnt/fuse /mnt/vfat /mnt/ext4/export /mnt/nfs
ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/frelink_sshfs
cat /root/.ssh/frelink_sshfs.pub >> /root/.ssh/authorized_keys
sshfs -o IdentityFile=/root/.ssh/frelink_sshfs,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
  root@127.0.0.1:/mnt/ext4/fuse-backing /mnt/fuse
truncate -s 64M $W/vfat.img; mkfs.vfat $W/vfat.img >/dev/null
mount -o loop -t vfat $W/vfat.img /mnt/vfat
echo '/mnt/ext4/export 127.0.0.1(rw,sync,no_subtree_check,no_root_squash)' > /etc/exports
systemctl restart nfs-server >&2
mount -t nfs -o vers=4.2 127.0.0.1:/mnt/ext4/export /mnt/nfs
hold() {  # hold NAME PATH SIZE [MODE]
  setsid python3 $W/holder.py "$2" "$3" "${4:-idle}" $W/info/$1.json </dev/null >/dev/null 2>&1 &
}
for fs in fuse vfat; do
  hold $fs-fallback /mnt/$fs/fallback.dat 1048576
  hold $fs-nofallback /mnt/$fs/nofallback.dat 4096
done
hold nfs /mnt/nfs/app.log 1048576
hold appendonly /mnt/ext4/appendonly.dat 65536 appendonly
for i in $(seq 100); do
  [ $(ls $W/info/fuse-*.json $W/info/vfat-*.json $W/info/nfs.json $W/info/appendonly.json 2>/dev/null \
      | wc -l) -ge 6 ] && break
  sleep 0.2
done
python3 - <<'PY'
import json, os
out = {}
for name in ("fuse-fallback", "fuse-nofallback", "vfat-fallback", "vfat-nofallback", "nfs", "appendonly"):
    out[name] = json.load(open("%(work)s/info/%%s.json" %% name))
out["nfs"]["current"] = os.readlink("/proc/%%d/fd/%%d" %% (out["nfs"]["pid"], out["nfs"]["fd"]))
print(json.dumps(out))
PY
"""


# A container as the kernel sees one: an overlay (lower, upper and work on ext4, and
# on xfs) mounted in a private mount namespace with its own PID namespace, the
# process in a cgroup named the way Podman names its containers' scopes.
CONTAINER_ID = "f00d" * 16
OVERLAY_SETUP = r"""
set -eu
W=%(work)s
mkdir -p /sys/fs/cgroup/machine.slice/libpod-%(cid)s.scope
for fs in ext4 xfs; do
  ov=/mnt/$fs/ov
  mkdir -p $ov/lower $ov/upper $ov/work $ov/merged
  echo from-the-image > $ov/lower/base.txt
  setsid unshare -m -p -f --propagation private sh -c \
    "mount -t overlay overlay -o lowerdir=$ov/lower,upperdir=$ov/upper,workdir=$ov/work $ov/merged &&
     exec python3 $W/holder.py $ov/merged/app.log 1048576 idle $W/info/ov-$fs.json" </dev/null >/dev/null 2>&1 &
done
for i in $(seq 100); do
  [ -e $W/info/ov-ext4.json ] && [ -e $W/info/ov-xfs.json ] && break
  sleep 0.2
done
python3 - <<'PY'
import json, subprocess
out = {}
for fs in ("ext4", "xfs"):
    info = json.load(open("%(work)s/info/ov-%%s.json" %% fs))
    # the holder sees itself as pid 1 of its namespace; the host pid is the one frelink uses
    info["pid"] = int(subprocess.check_output(["pgrep", "-f", "^python3 .*holder.py /mnt/%%s/ov/merged/app.log" %% fs]))
    with open("/sys/fs/cgroup/machine.slice/libpod-%(cid)s.scope/cgroup.procs", "w") as procs:
        procs.write(str(info["pid"]))
    out["ov-" + fs] = info
print(json.dumps(out))
PY
"""


def _env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
                ANSIBLE_PIPELINING="1", ANSIBLE_HOST_KEY_CHECKING="0", ANSIBLE_NOCOLOR="1",
                ANSIBLE_LOCALHOST_WARNING="false", PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))


def _playbook(inventory, playbook, extra=None, check=False):
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)]
    if extra:
        argv += ["-e", json.dumps(extra)]
    if check:
        argv.append("--check")
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=1200, check=False)


def _restore_task(name, args, check_mode=False):
    task = {"name": name, "frelink.frelink.frelink_restore": args, "register": "r_" + name.replace("-", "_"),
            "ignore_errors": True}
    if check_mode:
        task["check_mode"] = True
    return task


def _shell_task(name, cmd):
    """A check through `raw`: no Python start in the (slow, emulated) guest."""
    return {"name": name, "ansible.builtin.raw": cmd, "register": "r_" + name.replace("-", "_"),
            "changed_when": False, "ignore_errors": True}


def _main_playbook(h, results_file):
    """Every scenario as tasks; all registered results saved on the controller.

    Each frelink_restore task starts Python in an emulated guest, so the
    number of module tasks is kept small: check mode and the rerun of the
    path selector are one bulk task for all four filesystems, reruns of the
    other selectors are on ext4 only, and checks use `raw`."""
    tasks, names = [], []

    def add(task):
        tasks.append(task)
        names.append(task["register"])

    def src(held):
        return "/proc/%d/fd/%d" % (held["pid"], held["fd"])

    for backend in ("kernel", "proc"):  # before anything is restored: the same orphans both ways
        add({"name": "facts-" + backend, "frelink.frelink.frelink_facts": {"backend": backend, "limit": 0},
             "register": "r_facts_" + backend})
    add(_restore_task("check", {"paths": ["/mnt/*/check.dat"]}, check_mode=True))
    add(_shell_task("check-after", "ls /mnt/ext4/check.dat /mnt/xfs/check.dat /mnt/btrfs/check.dat "
                                   "/mnt/tmpfs/check.dat 2>&1 | grep -c 'No such file'"))
    for fs in FILESYSTEMS:
        ino = h["inode-" + fs]
        add(_restore_task("path-" + fs, {"path": h["path-" + fs]["path"]}))
        add(_restore_task("src-" + fs, {"src": src(h["src-" + fs]), "dest": "/mnt/%s/bysrc.restored" % fs}))
        add(_restore_task("inode-" + fs, {"device": ino["device"], "inode": ino["ino"], "dest": ino["path"]}))
    add(_restore_task("path-again", {"paths": ["/mnt/*/bypath.dat"]}))
    add(_restore_task("path-again-ext4", {"path": h["path-ext4"]["path"]}))
    add(_restore_task("src-again-ext4", {"src": src(h["src-ext4"]), "dest": "/mnt/ext4/bysrc.restored"}))
    add(_restore_task("inode-again-ext4", {"device": h["inode-ext4"]["dev"], "inode": h["inode-ext4"]["ino"],
                                           "dest": h["inode-ext4"]["path"]}))
    add(_shell_task("later", "; ".join(
        "kill -USR1 %(pid)d; for i in $(seq 50); do [ \"$(head -c 11 %(path)s)\" = LATER-WRITE ] && break; "
        "sleep 0.2; done; head -c 11 %(path)s; echo; stat -c '%%d %%i %%h' %(path)s"
        % {"pid": h["path-" + fs]["pid"], "path": h["path-" + fs]["path"]} for fs in FILESYSTEMS)))
    refuse = src(h["refuse"])
    add(_restore_task("dest-exists", {"src": refuse, "dest": "/mnt/ext4/occupied"}))
    add(_restore_task("symlink-dest", {"src": refuse, "dest": "/mnt/ext4/planted"}))
    add(_restore_task("symlink-parent", {"src": refuse, "dest": "/mnt/ext4/linkdir/refuse.dat"}))
    add(_restore_task("cross-fs", {"src": refuse, "dest": "/mnt/xfs/refuse.dat", "method": "link"}))
    add(_shell_task("refusals-after", "cat /mnt/ext4/occupied /mnt/ext4/victim; ls -A /mnt/ext4/realdir; "
                                      "test ! -e /mnt/xfs/refuse.dat && readlink /mnt/ext4/planted"))
    for fs in ("btrfs", "xfs"):
        add(_restore_task("reflink-" + fs, {"src": src(h["reflink-" + fs]), "dest": "/mnt/%s/clone.copy" % fs,
                                            "method": "reflink"}))
    add(_shell_task("reflink-sums", "sha256sum %s /mnt/btrfs/clone.copy %s /mnt/xfs/clone.copy | cut -d' ' -f1"
                    % (src(h["reflink-btrfs"]), src(h["reflink-xfs"]))))
    grow = src(h["append"])
    add(_restore_task("append-copy", {"src": grow, "dest": "/mnt/ext4/growing.copy", "method": "copy",
                                      "copy_retries": 2}))
    add(_shell_task("append-after", "if [ -e /mnt/ext4/growing.copy ]; then cmp -n $(stat -c %%s /mnt/ext4/growing.copy)"
                    " /mnt/ext4/growing.copy %s && echo prefix-ok; fi; ls -A /mnt/ext4 | grep -c frelink"
                    " || true" % grow))
    img = h["loopimg"]
    generation = ("(r_facts_kernel.ansible_facts.frelink.orphans | selectattr('ino', 'equalto', %d) | first)"
                  ".generation" % img["ino"])
    by_identity = {"device": img["dev"], "inode": img["ino"], "dest": "/root/frelink-restore/disk.stale"}
    # as if the facts were of a file that was freed and whose number the loop's file then got
    add(_restore_task("loop-stale", dict(by_identity, generation="{{ %s + 1 }}" % generation)))
    add(_restore_task("loop-generation", dict(by_identity, generation="{{ %s }}" % generation), check_mode=True))
    add(_restore_task("loop", {"src": h["loopdev"], "dest": "/root/frelink-restore/disk.restored"}))
    add(_restore_task("loop-again", {"src": h["loopdev"], "dest": "/root/frelink-restore/disk.restored"}))
    add(_shell_task("loop-after", "stat -c '%d %i %h' /root/frelink-restore/disk.restored; cat /mnt/loopmnt/hello; "
                                  "test -e /root/frelink-restore/disk.stale && echo stale || echo no-stale"))
    ns = h["ns"]
    add(_restore_task("ns", {"path": ns["path"]}))
    add(_shell_task("ns-after", "stat -c '%%d %%i %%h' /proc/%d/root/mnt/ns/secret.dat; ls -A /mnt/ns; echo end"
                    % ns["pid"]))
    elsewhere = {"include": ["/mnt/fuse/*", "/mnt/vfat/*", "/mnt/nfs/*"]}
    add({"name": "facts-elsewhere", "frelink.frelink.frelink_facts": elsewhere, "register": "r_facts_elsewhere"})
    for fs in ("fuse", "vfat"):
        fallback, nofallback = h[fs + "-fallback"]["path"], h[fs + "-nofallback"]["path"]
        add(_restore_task("check-fallback-" + fs, {"path": fallback, "fallback": ["copy"]}, check_mode=True))
        add(_restore_task("check-nofallback-" + fs, {"path": nofallback}, check_mode=True))
        add(_restore_task("fallback-" + fs, {"path": fallback, "fallback": ["reflink", "copy"]}))
        add(_restore_task("nofallback-" + fs, {"path": nofallback}))
        add(_shell_task("after-" + fs, "cmp %s %s && echo same; ls -A /mnt/%s | grep -v '^.fuse_hidden'" % (
            src(h[fs + "-fallback"]), fallback, fs)))
    add(_restore_task("appendonly", {"path": h["appendonly"]["path"], "fallback": ["copy"]}))
    nfs = h["nfs"]
    add(_restore_task("nfs", {"src": src(nfs), "dest": nfs["path"]}))
    add(_restore_task("nfs-again", {"src": src(nfs), "dest": nfs["path"]}))
    add(_shell_task("nfs-after", "stat -c '%%d %%i' %(path)s; cmp %(src)s %(path)s && echo same; kill %(pid)d; "
                    "for i in $(seq 50); do ls -A /mnt/nfs | grep -q '^.nfs' || break; sleep 0.2; done; "
                    "ls -A /mnt/nfs; stat -c '%%i %%h %%s' %(path)s"
                    % {"path": nfs["path"], "src": src(nfs), "pid": nfs["pid"]}))
    add({"name": "facts-overlay", "frelink.frelink.frelink_facts": {"include": ["/mnt/*/ov/merged/*"]},
         "register": "r_facts_overlay"})
    for fs in ("ext4", "xfs"):
        held, ov = h["ov-" + fs], "/mnt/%s/ov" % fs
        rescue = "/mnt/%s/frelink-rescue/%s%s" % (fs, CONTAINER_ID[:12], held["path"])
        add(_restore_task("ov-refuse-" + fs, {"src": src(held), "dest": ov + "/upper/stolen.log"}))
        add(_restore_task("ov-" + fs, {"src": src(held)}))
        add(_shell_task("ov-after-" + fs, "kill -USR1 %(pid)d; for i in $(seq 50); do [ \"$(head -c 11 %(r)s)\" = "
                        "LATER-WRITE ] && break; sleep 0.2; done; head -c 11 %(r)s; echo; stat -c '%%d %%i %%h' %(r)s; "
                        "ls -A %(ov)s/upper; test ! -e %(ov)s/upper/stolen.log && echo clean"
                        % {"pid": held["pid"], "r": rescue, "ov": ov}))
        add(_restore_task("ov-again-" + fs, {"src": src(held), "dest": rescue}))
        add(_restore_task("ov-again-path-" + fs, {"path": held["path"]}))  # as recover.yml reruns it
    add(_shell_task("rmmod", "rmmod frelink && test ! -e /sys/module/frelink && echo unloaded"))
    add(_restore_task("not-loaded", {"path": h["notloaded"]["path"]}))
    add({"name": "facts-kernel-unloaded", "frelink.frelink.frelink_facts": {"backend": "kernel"},
         "register": "r_facts_kernel_unloaded", "ignore_errors": True})
    add({"name": "facts-auto-unloaded", "frelink.frelink.frelink_facts": {"include": [h["notloaded"]["path"]]},
         "register": "r_facts_auto_unloaded"})
    save = {"name": "save results", "delegate_to": "localhost", "check_mode": False,
            "ansible.builtin.copy": {"dest": str(results_file), "mode": "0600",
                                     "content": "{{ %s | to_json }}" % (
                                         "{" + ", ".join("'%s': %s" % (n, n) for n in names) + "}")}}
    tasks.append(save)
    return [{"name": "frelink_restore scenarios", "hosts": "guest", "gather_facts": False, "tasks": tasks}]


@pytest.fixture(scope="module", params=SUITES)
def restored(request, tmp_path_factory):
    """(suite, holders, results of every task, recover.yml runs)."""
    suite = request.param
    module = harness.build_module(suite, REPO / "kmod")
    tmp = tmp_path_factory.mktemp("restore-%s-" % suite)  # pytest's: removed with its old runs
    with harness.Guest(suite) as guest:
        load_frelink(guest, module, WORK)
        holders = json.loads(guest.run(SETUP % {"work": WORK}, timeout=300).stdout.splitlines()[-1])
        guest.install_debs(EXTRA_PACKAGES)
        holders.update(json.loads(guest.run(EXTRA_SETUP % {"work": WORK}, timeout=300).stdout.splitlines()[-1]))
        holders.update(json.loads(guest.run(OVERLAY_SETUP % {"work": WORK, "cid": CONTAINER_ID},
                                            timeout=300).stdout.splitlines()[-1]))
        inventory = guest.inventory_path()
        recover = REPO / "playbooks" / "recover.yml"
        rec_vars = {"frelink_recover_paths": ["/mnt/ext4/recover/*"], "frelink_recover_hosts": "guest"}
        runs = {"recover_check": _playbook(inventory, recover, rec_vars, check=True)}
        runs["recover_check_ls"] = guest.run("ls -A /mnt/ext4/recover").stdout
        runs["recover"] = _playbook(inventory, recover, rec_vars)
        runs["recover_stat"] = guest.run("stat -c '%d %i %h' /mnt/ext4/recover/a.dat /mnt/ext4/recover/b.dat",
                                         check=False).stdout
        playbook = tmp / "restore.yml"
        results_file = tmp / "results.json"
        playbook.write_text(json.dumps(_main_playbook(holders, results_file), indent=1))
        runs["main"] = _playbook(inventory, playbook)
        assert results_file.exists(), runs["main"].stdout[-20000:] + runs["main"].stderr[-5000:]
        results = json.loads(results_file.read_text())
        console = guest.console_log()
        yield {"suite": suite, "h": holders, "r": results, "runs": runs, "console": console}


def _ok(res):
    assert not res.get("failed"), res.get("msg")
    return res


def _failed(res, *texts):
    assert res.get("failed") is True, res
    for text in texts:
        assert text in res["msg"], (text, res["msg"])
    assert res["changed"] is False
    return res


def test_check_mode_changes_nothing(restored):
    res = _ok(restored["r"]["r_check"])
    assert res["changed"] is True and len(res["results"]) == len(FILESYSTEMS)
    assert sorted(r["dest"] for r in res["results"]) == sorted("/mnt/%s/check.dat" % fs for fs in FILESYSTEMS)
    assert {(r["status"], r["method"]) for r in res["results"]} == {("would_restore", "link")}
    assert restored["r"]["r_check_after"]["stdout"].split() == [str(len(FILESYSTEMS))], "check mode made a file"


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_relink_by_path_keeps_later_writes(restored, fs):
    held = restored["h"]["path-" + fs]
    res = _ok(restored["r"]["r_path_" + fs])
    assert res["changed"] is True and res["status"] == "restored" and res["method"] == "link"
    assert res["identity_preserved"] is True and res["verification"]["same_inode"] is True
    assert (res["dev"], res["ino"]) == (held["dev"], held["ino"]) and res["dest"] == held["path"]
    later = restored["r"]["r_later"]["stdout"].splitlines()
    i = FILESYSTEMS.index(fs) * 2
    assert later[i] == "LATER-WRITE", "the holder's write after the relink is not in dest"
    assert later[i + 1] == "%d %d 1" % (held["dev"], held["ino"])


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_relink_by_src_and_by_inode(restored, fs):
    for kind in ("src", "inode"):
        held = restored["h"]["%s-%s" % (kind, fs)]
        res = _ok(restored["r"]["r_%s_%s" % (kind, fs)])
        assert res["changed"] is True and res["method"] == "link", res
        assert (res["verification"]["dest_dev"], res["verification"]["dest_ino"]) == (held["dev"], held["ino"])


def test_rerun_is_unchanged(restored):
    r = restored["r"]
    bulk = _ok(r["r_path_again"])
    assert bulk["changed"] is False and bulk["results"] == [], "relinked files are no longer deleted"
    assert _ok(r["r_path_again_ext4"])["status"] == "nothing_to_restore"
    for kind in ("src", "inode"):
        again = _ok(r["r_%s_again_ext4" % kind])
        assert again["changed"] is False and again["status"] == "already_restored", again


def test_refusals_touch_nothing(restored):
    r = restored["r"]
    _failed(r["r_dest_exists"], "exists", "/mnt/ext4/occupied", "nothing was touched")
    _failed(r["r_symlink_dest"], "/mnt/ext4/planted is a symbolic link")
    _failed(r["r_symlink_parent"], "/mnt/ext4/linkdir is a symbolic link", "never follows symlinks")
    _failed(r["r_cross_fs"], "another filesystem", "method: copy")
    after = r["r_refusals_after"]
    assert after["rc"] == 0 and after["stdout"].split() == ["occupied", "victim", "/mnt/ext4/victim"], after


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_reflink_identical_clone(restored, fs):
    res = _ok(restored["r"]["r_reflink_" + fs])
    assert res["method"] == "reflink" and res["identity_preserved"] is False
    assert res["verification"]["sha256"] == res["verification"]["source_sha256"]
    sums = restored["r"]["r_reflink_sums"]["stdout"].split()
    i = 0 if fs == "btrfs" else 2
    assert len(sums) == 4 and sums[i] == sums[i + 1] == res["verification"]["sha256"]


def test_copy_of_appended_file_is_consistent_or_refused(restored):
    res = restored["r"]["r_append_copy"]
    after = restored["r"]["r_append_after"]["stdout"].split()
    if res.get("failed"):
        assert "kept changing" in res["msg"] and "torn copy is never kept" in res["msg"]
        assert after == ["0"], after  # no copy, no temporary file
    else:
        assert res["verification"]["sha256"] == res["verification"]["source_sha256"]
        assert after == ["prefix-ok", "0"], after


def test_loop_mounted_deleted_image(restored):
    img = restored["h"]["loopimg"]
    res = _ok(restored["r"]["r_loop"])
    assert res["changed"] is True and res["method"] == "link" and (res["dev"], res["ino"]) == (img["dev"], img["ino"])
    again = _ok(restored["r"]["r_loop_again"])
    assert again["changed"] is False and again["status"] == "already_restored"
    after = restored["r"]["r_loop_after"]["stdout"].splitlines()
    assert after == ["%d %d 1" % (img["dev"], img["ino"]), "inside-the-image", "no-stale"]
    # the module reported the generation of the loop's deleted file: restore passed it back
    facts = _ok(restored["r"]["r_facts_kernel"])["ansible_facts"]["frelink"]
    entry = [o for o in facts["orphans"] if (o["dev"], o["ino"]) == (img["dev"], img["ino"])]
    assert len(entry) == 1 and isinstance(entry[0].get("generation"), int), entry
    # by device and inode from facts whose generation is not the file's: refused, nothing made
    generation = entry[0]["generation"]
    _failed(restored["r"]["r_loop_stale"], "generation %d; the facts gave generation %d" % (generation, generation + 1),
            "nothing was changed")
    checked = _ok(restored["r"]["r_loop_generation"])
    assert (checked["status"], checked["method"]) == ("would_restore", "link"), checked


def test_holder_in_other_mount_namespace(restored):
    ns = restored["h"]["ns"]
    res = _ok(restored["r"]["r_ns"])
    assert res["changed"] is True and res["method"] == "link"
    assert res["dest"] == "/proc/%d/root/mnt/ns/secret.dat" % ns["pid"]
    after = restored["r"]["r_ns_after"]["stdout"].splitlines()
    assert after[0] == "%d %d 1" % (ns["dev"], ns["ino"])
    assert after[1:] == ["end"], "the name appeared in the root namespace's /mnt/ns instead"


def test_facts_say_relink_only_where_the_module_relinks(restored):
    facts = _ok(restored["r"]["r_facts_elsewhere"])["ansible_facts"]["frelink"]
    by_path = {o["path"]: o for o in facts["orphans"]}
    h = restored["h"]
    for fs in ("fuse", "vfat"):
        entry = by_path[h[fs + "-fallback"]["path"]]
        assert entry["restore"]["relink"] is False and entry["fstype"].startswith(fs), entry
    nfs = by_path[h["nfs"]["current"]]
    assert nfs["nfs_silly_rename"] is True and nfs["original_path"] is None and "recorded nowhere" in nfs["note"]
    assert nfs["restore"]["relink"] is True and nfs["ino"] == h["nfs"]["ino"] and nfs["fstype"].startswith("nfs")


@pytest.mark.parametrize("fs", ["fuse", "vfat"])
def test_auto_falls_back_to_copy_where_the_module_does_not_relink(restored, fs):
    r = restored["r"]
    check = _ok(r["r_check_fallback_" + fs])
    assert check["status"] == "would_restore" and check["method"] == "copy", check
    assert "relinks only on" in check["fallback_reasons"][0], check
    _failed(r["r_check_nofallback_" + fs], "relinks only on", "no fallback allowed")
    real = _ok(r["r_fallback_" + fs])
    assert real["status"] == "restored" and real["method"] == "copy" and real["identity_preserved"] is False
    assert real["fallback_reasons"] == check["fallback_reasons"][:1] + [
        reason for reason in real["fallback_reasons"][1:] if reason.startswith("reflink")], real
    _failed(r["r_nofallback_" + fs], "relinks only on", "no fallback allowed")
    after = r["r_after_" + fs]["stdout"].split()
    assert after == ["same", "fallback.dat"], "the copy differs, or the refusal left something: %s" % after


def test_a_kernel_refusal_falls_back_too(restored):
    """An append-only deleted inode: the plan allows a relink, vfs_link() says EPERM, nothing changed."""
    res = _ok(restored["r"]["r_appendonly"])
    assert res["method"] == "copy" and res["status"] == "restored", res
    assert res["fallback_reasons"][0].startswith("link: the kernel module refused") and "EPERM" in \
        res["fallback_reasons"][0], res


def test_nfs_silly_renamed_file_gets_its_name_back(restored):
    nfs = restored["h"]["nfs"]
    assert "/.nfs" in nfs["current"], nfs
    res = _ok(restored["r"]["r_nfs"])
    assert res["status"] == "restored" and res["method"] == "link" and res["link_mechanism"] == "linkat", res
    assert (res["verification"]["dest_dev"], res["verification"]["dest_ino"]) == (nfs["dev"], nfs["ino"])
    again = _ok(restored["r"]["r_nfs_again"])
    assert again["changed"] is False and again["status"] == "already_restored", again
    after = restored["r"]["r_nfs_after"]["stdout"].splitlines()
    assert after[0] == "%d %d" % (nfs["dev"], nfs["ino"]) and after[1] == "same", after
    # the holder exited: the client dropped its .nfs name, the restored name stays with the data
    assert after[2:] == ["app.log", "%d 1 1048576" % nfs["ino"]], after


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_overlay_container_file_facts(restored, fs):
    held = restored["h"]["ov-" + fs]
    facts = _ok(restored["r"]["r_facts_overlay"])["ansible_facts"]["frelink"]
    entry = next(o for o in facts["orphans"] if o["path"] == held["path"])
    assert entry["fstype"] == "overlay" and entry["path_in_container"] == held["path"], entry
    upper = entry["overlay"]
    assert upper["upperdir"] == "/mnt/%s/ov/upper" % fs and upper["upper_fstype"] == fs, upper
    assert upper["workdir"] == "/mnt/%s/ov/work" % fs and upper["lowerdir"] == ["/mnt/%s/ov/lower" % fs]
    assert upper["rescue_dir"] == "/mnt/%s/frelink-rescue" % fs
    assert entry["container"] == {"runtime": "podman", "id": CONTAINER_ID, "short_id": CONTAINER_ID[:12]}
    assert entry["holders"][0]["container"] == entry["container"] and entry["holders"][0]["pid"] == held["pid"]
    assert entry["restore"]["relink"] is True


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_overlay_container_file_is_relinked_on_its_upper_layer(restored, fs):
    r, held = restored["r"], restored["h"]["ov-" + fs]
    _failed(r["r_ov_refuse_" + fs], "inside the layer directory", "/mnt/%s/ov/upper" % fs)
    res = _ok(r["r_ov_" + fs])
    rescue = "/mnt/%s/frelink-rescue/%s%s" % (fs, CONTAINER_ID[:12], held["path"])
    assert res["status"] == "restored" and res["method"] == "link" and res["dest"] == rescue, res
    assert res["verification"]["dest_ino"] == held["ino"] and res["identity_preserved"] is True
    after = r["r_ov_after_" + fs]["stdout"].splitlines()
    assert after[0] == "LATER-WRITE", "the holder's write after the relink is not in the rescued file"
    assert after[1] == "%d %d 1" % (res["verification"]["dest_dev"], held["ino"])
    assert after[2:] == ["clean"], "the upper layer changed: %s" % after  # no name inside the layer dirs
    again = _ok(r["r_ov_again_" + fs])
    assert again["changed"] is False and again["status"] == "already_restored", again
    by_path = _ok(r["r_ov_again_path_" + fs])
    assert (by_path["changed"], by_path["status"], by_path["dest"]) == (False, "nothing_to_restore", rescue), by_path


# what changes between two scans of a live host: the growing file's size, and file positions
_VOLATILE = ("size", "allocated", "mtime")


def _comparable(facts):
    entries = []
    for entry in facts["orphans"]:
        entry = {k: v for k, v in entry.items() if k not in _VOLATILE}
        entry["holders"] = [{k: v for k, v in holder.items() if k != "pos"} for holder in entry["holders"]]
        entries.append(entry)
    return sorted(entries, key=lambda e: (e["dev"] or 0, e["ino"] or 0, e["path"]))


def test_kernel_listing_gives_the_facts_a_proc_scan_gives(restored):
    """backend=kernel (the module lists the handles) and backend=proc (/proc is read) agree on
    every orphan of this guest: fds on ext4, xfs, btrfs, tmpfs, FUSE, vfat, an NFS silly rename,
    an overlay in another mount and pid namespace, a loop image, every field but sizes."""
    kernel = _ok(restored["r"]["r_facts_kernel"])["ansible_facts"]["frelink"]
    proc = _ok(restored["r"]["r_facts_proc"])["ansible_facts"]["frelink"]
    assert kernel["scan"]["backend"] == "kernel" and proc["scan"]["backend"] == "proc"
    assert kernel["scan"]["complete"] is True and kernel["scan"]["warnings"] == []
    assert kernel["summary"]["count"] == proc["summary"]["count"] >= 30, (kernel["summary"], proc["summary"])
    for key in ("by_kind", "mapped_only", "deliberate", "truncated"):
        assert kernel["summary"][key] == proc["summary"][key], key
    assert _comparable(kernel) == _comparable(proc)
    kinds = {h["kind"] for o in kernel["orphans"] for h in o["holders"]}
    assert {"fd", "loop"} <= kinds, kinds
    assert any(o.get("nfs_silly_rename") for o in kernel["orphans"])
    assert any(o["fstype"] == "overlay" for o in kernel["orphans"])
    assert abs(kernel["scan"]["processes"] - proc["scan"]["processes"]) <= 3


def test_kernel_backend_without_the_module(restored):
    _failed(restored["r"]["r_facts_kernel_unloaded"], "backend=kernel", "not loaded", "frelink.frelink.frelink_kmod")
    auto = _ok(restored["r"]["r_facts_auto_unloaded"])["ansible_facts"]["frelink"]
    assert auto["scan"]["backend"] == "proc" and auto["summary"]["count"] == 1


def test_module_not_loaded_error(restored):
    assert restored["r"]["r_rmmod"]["stdout"].strip() == "unloaded", restored["r"]["r_rmmod"]
    _failed(restored["r"]["r_not_loaded"], "kernel module is not loaded", "frelink.frelink.frelink_kmod")


def test_recover_playbook_check_then_real(restored):
    runs, h = restored["runs"], restored["h"]
    check = runs["recover_check"]
    assert check.returncode == 0, check.stdout[-10000:] + check.stderr[-3000:]
    assert "would link /mnt/ext4/recover/a.dat" in check.stdout and "would restore 2" in check.stdout
    assert runs["recover_check_ls"].split() == []
    real = runs["recover"]
    assert real.returncode == 0, real.stdout[-10000:] + real.stderr[-3000:]
    assert "restored 2" in real.stdout
    assert runs["recover_stat"].splitlines() == [
        "%d %d 1" % (h[k]["dev"], h[k]["ino"]) for k in ("recover-a", "recover-b")]


def test_no_kernel_warnings(restored):
    for bad in ("Oops", "BUG:", "WARNING:", "Call Trace"):
        assert bad not in restored["console"], restored["console"][-5000:]
