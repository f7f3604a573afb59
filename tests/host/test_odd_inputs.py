"""Every input answered: a table of bad and odd inputs to both modules, run
through Ansible in one playbook on this host against real holders (deleted files,
a live file, a pipe, a socket, a directory, a dead pid). Each case must fail with
a message that names the problem, or succeed as it should; no output may hold a
traceback or MODULE FAILURE. Non-root answers are checked as user nobody.
"""
import json
import os
import subprocess
import sys
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from checkout import copy_checkout
from test_restore import ansible_env, ansible_playbook

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

HOLD = textwrap.dedent(r"""
    import json, os, socket, sys
    work = sys.argv[1]
    fds = {}
    for name in ("gone", "multibyte", "newline", "auto", "checked", "existing", "parent"):
        path = os.path.join(work, name + ".dat")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, name.encode() * 1000)
        os.unlink(path)
        fds[name] = fd
    live = os.path.join(work, "live.dat")
    with open(live, "w") as f:
        f.write("live")
    fds["live"] = os.open(live, os.O_RDONLY)
    fds["pipe"] = os.pipe()[0]
    fds["socket"] = socket.socket().detach()
    fds["directory"] = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    print(json.dumps(fds), flush=True)
    sys.stdin.read()
""")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    work = tmp_path_factory.mktemp("odd")
    work = type(work)(os.path.realpath(work))
    (work / "exists.txt").write_text("someone else's file")
    (work / "plainfile").write_text("not a directory")
    (work / "real").mkdir()
    (work / "link").symlink_to(work / "real")
    holder = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLD, str(work)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    fds = json.loads(holder.stdout.readline())
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_st = os.stat(work / "live.dat")
    try:
        yield {"work": work, "pid": holder.pid, "fds": fds, "dead": dead.pid,
               "live": "%d:%d" % (os.major(live_st.st_dev), os.minor(live_st.st_dev)), "live_ino": live_st.st_ino}
    finally:
        holder.kill()
        holder.wait()


def _cases(s):
    """(name, module, args, check_mode, expect): expect is ("ok", status or None) or ("fail", words in msg)."""
    w, pid, fd, dead = str(s["work"]), s["pid"], s["fds"], s["dead"]

    def src(name):
        return "/proc/%d/fd/%d" % (pid, fd[name])
    r = "frelink_restore"
    f = "frelink_facts"
    return [
        ("dead pid as src", r, {"src": "/proc/%d/fd/3" % dead}, False, ("fail", ["cannot open", "exited"])),
        ("dead pid as path", r, {"path": "/proc/%d/fd/3" % dead}, False, ("fail", ["cannot open", "exited"])),
        ("self is not a pid", r, {"src": "/proc/self/fd/0"}, False, ("fail", ["neither"])),
        ("relative src", r, {"src": "proc/1/fd/1"}, False, ("fail", ["neither"])),
        ("empty src", r, {"src": ""}, False, ("fail", ["src is empty"])),
        ("empty path", r, {"path": ""}, False, ("fail", ["path is empty"])),
        ("relative path", r, {"path": "var/log/x"}, False, ("fail", ["must be absolute"])),
        ("device is text", r, {"device": "abc", "inode": 5}, False, ("fail", ["neither an st_dev"])),
        ("device '-1'", r, {"device": "-1", "inode": 5}, False, ("fail", ["neither an st_dev"])),
        ("device negative int", r, {"device": -5, "inode": 5}, False, ("fail", ["negative"])),
        ("device bool", r, {"device": True, "inode": 5}, False, ("fail", ["neither an st_dev"])),
        ("inode negative", r, {"device": "8:1", "inode": -3}, False, ("fail", ["not an inode number"])),
        ("inode zero", r, {"device": "8:1", "inode": 0}, False, ("fail", ["not an inode number"])),
        ("inode text", r, {"device": "8:1", "inode": "many"}, False, ("fail", ["inode"])),
        ("huge device", r, {"device": "99999:1", "inode": 5}, False, ("fail", ["no deleted file"])),
        ("no such inode", r, {"device": "0:0", "inode": 12345}, False, ("fail", ["no deleted file"])),
        # a held file that has a name (never deleted, or relinked): its name names it, nothing to do
        ("live inode", r, {"device": s["live"], "inode": s["live_ino"]}, False, ("ok", "already_restored")),
        ("device without inode", r, {"device": "8:1"}, False, ("fail", ["inode"])),
        ("inode without device", r, {"inode": 5}, False, ("fail", ["device"])),
        ("path and src", r, {"path": "/x", "src": src("gone")}, False, ("fail", ["mutually exclusive"])),
        ("dest and dest_dir", r, {"src": src("gone"), "dest": w + "/a", "dest_dir": w}, False,
         ("fail", ["mutually exclusive"])),
        ("nothing selected", r, {"dest": w + "/a"}, False, ("fail", ["one of the following"])),
        ("bogus method", r, {"src": src("gone"), "method": "teleport"}, False, ("fail", ["method"])),
        ("link is no fallback", r, {"src": src("gone"), "fallback": ["link"]}, False, ("fail", ["fallback"])),
        ("copy_retries negative", r, {"src": src("gone"), "method": "copy", "copy_retries": -1}, False,
         ("fail", ["copy_retries must be 0"])),
        ("copy_retries text", r, {"src": src("gone"), "copy_retries": "lots"}, False, ("fail", ["copy_retries"])),
        ("bogus layout", r, {"paths": ["/nonexistent/*"], "dest_dir": w, "layout": "spiral"}, False,
         ("fail", ["layout"])),
        ("create_parents text", r, {"src": src("gone"), "create_parents": "maybe"}, False,
         ("fail", ["create_parents"])),
        ("relative dest", r, {"src": src("gone"), "dest": "x.dat", "method": "copy"}, False,
         ("fail", ["absolute"])),
        ("dest is /", r, {"src": src("gone"), "dest": "/", "method": "copy"}, False, ("fail", ["names a directory"])),
        ("dest with ..", r, {"src": src("gone"), "dest": w + "/../x", "method": "copy"}, False, ("fail", ["'..'"])),
        ("dest name 256 bytes", r, {"src": src("gone"), "dest": w + "/" + "n" * 256, "method": "copy"}, False,
         ("fail", ["longer than 255 bytes"])),
        ("dest name 300 multibyte bytes", r, {"src": src("gone"), "dest": w + "/" + "\u00e9" * 150,
                                              "method": "copy"}, False, ("fail", ["longer than 255 bytes"])),
        ("dest name 254 multibyte bytes", r, {"src": src("multibyte"), "dest": w + "/" + "\u20ac" * 84 + "xx",
                                              "method": "copy"}, False, ("ok", "restored")),
        ("dest name with a newline", r, {"src": src("newline"), "dest": w + "/new\nline.dat", "method": "copy"},
         False, ("ok", "restored")),
        ("dest exists", r, {"src": src("existing"), "dest": w + "/exists.txt", "method": "copy"}, False,
         ("fail", ["exists", "nothing was touched"])),
        ("dest parent missing", r, {"src": src("gone"), "dest": w + "/no/such/x", "method": "copy"}, False,
         ("fail", ["does not exist", "create_parents"])),
        ("dest parent is a symlink", r, {"src": src("gone"), "dest": w + "/link/x", "method": "copy"}, False,
         ("fail", ["symbolic link"])),
        ("dest parent is a file", r, {"src": src("parent"), "dest": w + "/plainfile/x", "method": "copy"}, False,
         ("fail", ["not a directory"])),
        ("live file as src", r, {"src": src("live"), "dest": w + "/live2.dat"}, False, ("fail", ["not deleted"])),
        ("pipe as src", r, {"src": src("pipe")}, False, ("fail", ["not a regular file"])),
        ("socket as src", r, {"src": src("socket")}, False, ("fail", ["not a regular file"])),
        ("directory as src", r, {"src": src("directory")}, False, ("fail", ["not a regular file"])),
        ("bad map_files range", r, {"src": "/proc/%d/map_files/0-1" % pid}, False, ("fail", ["cannot open"])),
        ("live exe", r, {"src": "/proc/%d/exe" % pid, "dest": w + "/python"}, False, ("fail", ["not deleted"])),
        ("no such loop", r, {"src": "/dev/loop9999"}, False, ("fail", ["cannot query"])),
        ("a device node", r, {"src": "/dev/null"}, False, ("fail", ["neither"])),
        ("empty paths", r, {"paths": []}, False, ("fail", ["paths is empty"])),
        ("paths match nothing", r, {"paths": ["/nonexistent/*"], "dest_dir": w}, False, ("ok", None)),
        ("link without module", r, {"src": src("gone"), "method": "link", "dest": w + "/l.dat"}, False,
         ("fail", ["not loaded", "frelink_kmod"])),
        ("reflink on ext4", r, {"src": src("gone"), "method": "reflink", "dest": w + "/r.dat"}, False,
         ("fail", ["reflink"])),
        ("auto without fallback", r, {"src": src("gone"), "dest": w + "/a.dat"}, False,
         ("fail", ["no fallback allowed"])),
        ("auto, fallback copy, check mode", r, {"src": src("checked"), "dest": w + "/c.dat", "fallback": ["copy"]},
         True, ("ok", "would_restore")),
        ("auto falls back to copy", r, {"src": src("auto"), "dest": w + "/auto.dat", "fallback": ["reflink", "copy"]},
         False, ("ok", "restored")),
        ("facts: bogus kind", f, {"kinds": ["bogus"]}, False, ("fail", ["kinds"])),
        ("facts: negative min_size", f, {"min_size": -1}, False, ("fail", ["min_size must be a size of 0 or more"])),
        ("facts: negative limit", f, {"limit": -1}, False, ("fail", ["limit must be 0"])),
        ("facts: min_size text", f, {"min_size": "big"}, False, ("fail", ["min_size"])),
        ("facts: include as a string", f, {"include": w + "/*"}, False, ("ok", None)),
        ("facts: limit 0", f, {"limit": 0, "include": [w + "/*"]}, False, ("ok", None)),
        ("facts: unknown option", f, {"colour": "blue"}, False, ("fail", ["Unsupported parameters"])),
    ]


def test_odd_inputs_through_ansible(scene, tmp_path):
    cases = _cases(scene)
    assert len(cases) >= 50
    out = tmp_path / "results.json"
    tasks = []
    for i, (name, module, args, check, _expect) in enumerate(cases):
        tasks.append({"name": name, "frelink.frelink." + module: args, "register": "r%d" % i,
                      "ignore_errors": True, "check_mode": check})
    names = ", ".join("r%d" % i for i in range(len(cases)))
    tasks.append({"name": "save", "ansible.builtin.copy": {"content": "{{ [%s] | to_json }}" % names,
                                                           "dest": str(out)}})
    playbook = tmp_path / "odd.yml"
    playbook.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": tasks}]))
    proc = ansible_playbook(playbook)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    for bad in ("Traceback", "MODULE FAILURE"):
        assert bad not in proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    wrong = []
    for (name, _module, _args, _check, (outcome, what)), res in zip(cases, results):
        msg = str(res.get("msg", ""))
        if "unforeseen" in msg or "MODULE FAILURE" in msg:  # the modules' last-resort message
            wrong.append("%s: an unforeseen failure: %s" % (name, msg))
        elif outcome == "fail":
            if not res.get("failed") or not all(word in msg for word in what):
                wrong.append("%s: wanted a failure saying %s, got failed=%s msg=%r" % (
                    name, what, res.get("failed"), msg))
        elif res.get("failed") or (what is not None and res.get("status") != what):
            wrong.append("%s: wanted success %s, got failed=%s status=%s msg=%r" % (
                name, what, res.get("failed"), res.get("status"), msg))
    assert not wrong, "\n".join(wrong)
    work = scene["work"]
    assert (work / ("\u20ac" * 84 + "xx")).read_bytes() == b"multibyte" * 1000
    assert (work / "new\nline.dat").read_bytes() == b"newline" * 1000
    assert (work / "exists.txt").read_text() == "someone else's file"
    assert not (work / "c.dat").exists()  # check mode
    assert not [n for n in os.listdir(work) if n.endswith(".tmp")]


NOBODY = textwrap.dedent(r"""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore import run as restore
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scan
    facts = scan.scan()
    result, failures = restore.run({"path": sys.argv[2]})
    print(json.dumps({"scan": facts["scan"], "failures": failures}))
""")


def test_non_root_answers_say_the_scan_was_partial_and_to_become(scene):
    """As nobody, a root process's deleted file cannot be seen: the answer must say so, not 'exited'."""
    base = Path(tempfile.mkdtemp(prefix="frelink-nobody-"))  # pytest's tmp dirs are root-only
    try:
        _check_as_nobody(scene, base)
    finally:
        shutil.rmtree(base)


def _check_as_nobody(scene, base):
    root = base / "collections"
    copy_checkout(root / "ansible_collections" / "frelink" / "frelink")
    for top, dirs, _files in os.walk(base):
        os.chmod(top, 0o755)
    gone = str(scene["work"] / "gone.dat")
    proc = subprocess.run(["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-c", NOBODY, str(root), gone],
                          capture_output=True, text=True, env=ansible_env(), check=False, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert out["scan"]["complete"] is False
    assert any("become: true" in w for w in out["scan"]["warnings"])
    assert len(out["failures"]) == 1
    failure = out["failures"][0]
    assert "the scan was partial" in failure.lower() and "become: true" in failure
