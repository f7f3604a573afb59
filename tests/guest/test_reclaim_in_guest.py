"""playbooks/reclaim.yml in real Debian guests (bookworm 6.1, sid 7.x), through Ansible, on a
nearly full ext4: two systemd services write logs, one opened with O_APPEND and one without; the
logs are deleted (df full, du not); reclaim.yml --check predicts what it frees and changes
nothing, the real run frees exactly that (df before and after), a rerun changes nothing, and
both services stay up and keep writing (the appender at the new end, the other one at its offset,
past a hole).

No kernel module needed: frelink_reclaim truncates through the holders' descriptors.
One guest boot per suite.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from role_run import recap

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SUITES = ("bookworm", "sid")
WORK = "/root/frelink-reclaim"
MNT = "/srv/logs"
LOG_SIZE = 6 << 20
WRITER = Path(__file__).parent / "payload" / "log_writer.py"

SETUP = r"""
set -eu
W=%(work)s M=%(mnt)s
mkdir -p $W/info $M
truncate -s 64M $W/logs.img
mkfs.ext4 -q -F $W/logs.img >&2
mount -o loop $W/logs.img $M
wait_for() { for i in $(seq 150); do [ -e "$1" ] && return 0; sleep 0.2; done; echo "no $1" >&2; exit 1; }
systemd-run --quiet --unit=frelink-append python3 $W/log_writer.py $M/append.log %(size)d append $W/info/append.json
systemd-run --quiet --unit=frelink-plain python3 $W/log_writer.py $M/plain.log %(size)d plain $W/info/plain.json
wait_for $W/info/append.json
wait_for $W/info/plain.json
# nearly full: all but 1 MiB taken by a file that stays
avail=$(df -B1 --output=avail $M | tail -n 1)
fallocate -l $((avail - 1048576)) $M/filler
rm $M/append.log $M/plain.log
sync
python3 -c "import json; print(json.dumps({k: json.load(open('$W/info/%%s.json' %% k)) for k in ('append', 'plain')}))"
"""

# what the guest says about the filesystem and the two writers
STATE = r"""
sync
python3 - <<'END'
import json, os, subprocess
info = %(info)s
df = subprocess.run(["df", "-B1", "--output=used,avail", "%(mnt)s"], capture_output=True, text=True, check=True)
du = subprocess.run(["du", "-sB1", "%(mnt)s"], capture_output=True, text=True, check=True)
out = {"used": int(df.stdout.split()[-2]), "avail": int(df.stdout.split()[-1]), "du": int(du.stdout.split()[0])}
for key, held in info.items():
    st = os.stat("/proc/%%d/fd/%%d" %% (held["pid"], held["fd"]))
    active = subprocess.run(["systemctl", "is-active", "frelink-" + key], capture_output=True, text=True)
    with open("/proc/%%d/fd/%%d" %% (held["pid"], held["fd"]), "rb") as f:
        head = f.read(8).hex()
        f.seek(max(st.st_size - 4096, 0))
        tail = f.read()
    out[key] = {"size": st.st_size, "allocated": st.st_blocks * 512, "nlink": st.st_nlink,
                "active": active.stdout.strip(), "head": head, "tail_is_record": tail == b"R" * 4096}
print(json.dumps(out))
END
"""


def _state(guest, info):
    return json.loads(guest.run(STATE % {"info": json.dumps(info), "mnt": MNT}).stdout.splitlines()[-1])


def _playbook(guest, tmp, name, extra, check=False):
    """reclaim.yml against GUEST (with --check when CHECK); (returncode, output)."""
    path = Path(tmp) / name
    path.write_text("- ansible.builtin.import_playbook: %s\n" % (REPO / "playbooks" / "reclaim.yml"))
    argv = [str(BIN / "ansible-playbook"), "-i", str(guest.inventory_path()), str(path), "-e", json.dumps(extra)]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_PIPELINING="1", ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False")
    proc = subprocess.run(argv + (["--check"] if check else []), capture_output=True, text=True, env=env,
                          timeout=1800, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _figures(output, word):
    """(bytes, files) of the playbook's per-filesystem summary line ('freed N bytes in M files')."""
    found = re.findall(r"%s (\d+) bytes in (\d+) files" % word, " ".join(output.split()))
    assert len(found) == 1, output[-6000:]
    return tuple(int(x) for x in found[0])


@pytest.fixture(scope="module", params=SUITES)
def reclaimed(request, tmp_path_factory):
    suite = request.param
    tmp = tmp_path_factory.mktemp("reclaim-%s-" % suite)  # pytest's: removed with its old runs
    extra = {"frelink_reclaim_paths": [MNT + "/*"]}
    with harness.Guest(suite) as guest:
        guest.run("mkdir -p %s" % WORK)
        guest.put(str(WRITER), WORK + "/log_writer.py")
        info = json.loads(guest.run(SETUP % {"work": WORK, "mnt": MNT, "size": LOG_SIZE},
                                    timeout=600).stdout.splitlines()[-1])
        out = {"suite": suite, "info": info, "before": _state(guest, info)}
        out["check"] = _playbook(guest, tmp, "reclaim-check.yml", extra, check=True)
        out["after_check"] = _state(guest, info)
        out["done"] = _playbook(guest, tmp, "reclaim.yml", extra)
        out["after"] = _state(guest, info)
        out["again"] = _playbook(guest, tmp, "reclaim-again.yml", extra)
        out["after_again"] = _state(guest, info)
        guest.run("systemctl kill -s USR1 frelink-append frelink-plain && sleep 1")
        out["later"] = _state(guest, info)
        print("%s: df used %d -> %d (du %d), %s; %s" % (
            suite, out["before"]["used"], out["after"]["used"], out["before"]["du"],
            " ".join(" ".join(found) for found in re.findall(r"(would free|freed) (\d+) bytes", " ".join(
                (out["check"][1] + out["done"][1]).split()))), json.dumps(out["later"])))
        yield out


def test_the_disk_is_full_of_deleted_logs(reclaimed):
    before = reclaimed["before"]
    assert before["avail"] < 2 << 20, before  # nearly full
    for key in ("append", "plain"):
        assert before[key]["nlink"] == 0 and before[key]["allocated"] >= LOG_SIZE and before[key]["active"] == "active"
    # df counts the deleted logs, du does not
    assert before["used"] - before["du"] >= 2 * LOG_SIZE, before


def test_check_predicts_and_changes_nothing(reclaimed):
    rc, output = reclaimed["check"]
    assert rc == 0, output[-6000:]
    before, after = reclaimed["before"], reclaimed["after_check"]
    expected = before["append"]["allocated"] + before["plain"]["allocated"]
    assert _figures(output, "would free") == (expected, 2)
    assert (after["used"], after["append"]["size"], after["plain"]["size"]) == \
        (before["used"], before["append"]["size"], before["plain"]["size"])


def test_the_real_run_frees_what_check_predicted(reclaimed):
    rc, output = reclaimed["done"]
    assert rc == 0, output[-6000:]
    predicted = _figures(reclaimed["check"][1], "would free")
    assert _figures(output, "freed") == predicted
    before, after = reclaimed["before"], reclaimed["after"]
    assert before["used"] - after["used"] == predicted[0], (before, after)  # df before and after
    assert after["avail"] - before["avail"] == predicted[0]
    assert after["append"]["size"] == after["plain"]["size"] == 0
    assert recap(output)["changed"] == 1 and "Traceback" not in output


def test_the_services_stay_up_and_keep_writing(reclaimed):
    before, later = reclaimed["before"], reclaimed["later"]
    for key in ("append", "plain"):
        assert later[key]["active"] == "active" and later[key]["tail_is_record"], later
    # the appender writes at the new end: its file is just the new record
    assert later["append"]["size"] == 4096 and later["append"]["head"] == ("52" * 8)
    # the other one writes at its offset: past a hole, which takes no space
    assert later["plain"]["size"] == before["plain"]["size"] + 4096
    assert later["plain"]["head"] == "00" * 8 and later["plain"]["allocated"] <= 2 * 4096


def test_a_rerun_changes_nothing(reclaimed):
    rc, output = reclaimed["again"]
    assert rc == 0, output[-6000:]
    assert recap(output)["changed"] == 0
    assert reclaimed["after_again"]["used"] == reclaimed["after"]["used"]
    assert "already" in output and "empty" in output
