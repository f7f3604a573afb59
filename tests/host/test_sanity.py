"""Static checks of the collection: ansible-test sanity and ansible-doc.

ansible-test insists on running from ansible_collections/<ns>/<name>, so the
tree git knows about is copied there first.
"""
import json
import os
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


def test_ansible_test_sanity_is_clean(collection_copy):
    proc = subprocess.run(
        [str(SANITY_BIN / "ansible-test"), "sanity", "--local", "--python", "%d.%d" % sys.version_info[:2],
         "--color", "no"],
        cwd=collection_copy, capture_output=True, text=True, check=False,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_copy.parents[2]),
                 PATH="%s:%s" % (SANITY_BIN, os.environ["PATH"])),
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]


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
