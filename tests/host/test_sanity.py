"""Static checks of the collection: ansible-test sanity and ansible-doc.

ansible-test insists on running from ansible_collections/<ns>/<name>, so the
tree git knows about is copied there first.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# made by scripts/bootstrap.sh beside the test venv
SANITY_BIN = BIN.parent.parent / BIN.parent.name.replace("venv-", "sanity-venv-") / "bin"


def _collection_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanity") / "ansible_collections" / "frelink" / "frelink"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if not src.is_file():
            continue  # deleted in the work tree but still in the index
        dst = root / os.fsdecode(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    # ansible-test sanity only looks at what git tracks
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def collection_copy(tmp_path_factory):
    return _collection_copy(tmp_path_factory)


def _floor_bin():
    """The venv scripts/bootstrap.sh makes for tests/sanity-floor.txt's ansible-core."""
    pin = next(line for line in (REPO / "tests" / "sanity-floor.txt").read_text().splitlines()
               if line.startswith("ansible-core=="))
    key = hashlib.sha256((pin + "\n").encode()).hexdigest()[:12]
    return BIN.parent.parent / ("sanity-floor-venv-" + key) / "bin", pin.split("==")[1]


def _sanity(collection_copy, tool_bin):
    return subprocess.run(
        [str(tool_bin / "ansible-test"), "sanity", "--local", "--python", "%d.%d" % sys.version_info[:2],
         "--color", "no"],
        cwd=collection_copy, capture_output=True, text=True, check=False,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_copy.parents[2]),
                 PATH="%s:%s" % (tool_bin, os.environ["PATH"])),
    )


def test_ansible_test_sanity_is_clean(collection_copy):
    proc = _sanity(collection_copy, SANITY_BIN)
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]


def test_ansible_test_sanity_is_clean_on_the_oldest_ansible_core_allowed(collection_copy):
    """requires_ansible's floor (meta/runtime.yml) runs its own sanity: e.g. 2.16 wants empty __init__.py."""
    tool_bin, version = _floor_bin()
    floor = re.search(r"requires_ansible: \">=(\d+\.\d+)", (REPO / "meta" / "runtime.yml").read_text()).group(1)
    assert version.startswith(floor + "."), "tests/sanity-floor.txt (%s) is not requires_ansible's floor %s" % (
        version, floor)
    proc = _sanity(collection_copy, tool_bin)
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]


# Managed nodes: Python 3.8 (tests/config.yml's floor) up to the newest that
# ansible-core 2.19 runs modules with; the full sanity run above uses the host's.
MODULE_PYTHONS = ("3.8", "3.13")


def _interpreter(version):
    """A real python<version> (pyenv's versions, then PATH without pyenv's shims), or None."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(pyenv.glob(version + ".*"), reverse=True):
        exe = candidate / "bin" / ("python" + version)
        if exe.exists():
            return str(exe)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if "/shims" not in p)
    return shutil.which("python" + version, path=path)


@pytest.mark.parametrize("version", MODULE_PYTHONS)
def test_modules_compile_and_import_on_the_managed_node_pythons(collection_copy, version):
    exe = _interpreter(version)
    if exe is None:
        pytest.skip("no python%s here (neither on PATH nor in pyenv): the module floor is only checked with the "
                    "host's Python" % version)
    proc = subprocess.run(
        [str(SANITY_BIN / "ansible-test"), "sanity", "--local", "--python", version, "--test", "compile",
         "--test", "import", "--color", "no"],
        cwd=collection_copy, capture_output=True, text=True, check=False,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_copy.parents[2]),
                 PATH="%s:%s:%s" % (Path(exe).parent, SANITY_BIN, os.environ["PATH"])),
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    assert 'Running sanity test "compile" on Python %s' % version in proc.stdout + proc.stderr


@pytest.mark.parametrize("module", ["frelink_facts", "frelink_restore"])
def test_ansible_doc_renders(module):
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", "frelink.frelink." + module],
        capture_output=True, text=True, check=False,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections")),
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["frelink.frelink." + module]
    assert doc["doc"]["short_description"]
    assert doc["doc"]["options"]
    assert doc["examples"].strip()
    assert doc["return"]
