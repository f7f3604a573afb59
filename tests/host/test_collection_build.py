"""The built collection is what users install: build it, install it, use it.

The build runs on a copy of the checkout planted with what a developer's tree has
after `make test` (the .build/collections link to the checkout, .pytest_cache,
kernel build products, tests/output), installs the artifact into an empty
collections path the way `ansible-galaxy collection install` from Galaxy does, and
runs frelink_facts ad hoc from there against a real deleted-but-held file.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from checkout import copy_checkout
from orphans import deleted_open_file, require_root

BIN = Path(sys.executable).parent  # the venv with ansible-core
REPO = Path(__file__).resolve().parents[2]

# what a collection artifact may hold at its top level
ALLOWED_TOP = {"MANIFEST.json", "FILES.json", "README.md", "LICENSE", "LICENSES", "REUSE.toml", "changelogs", "docs",
               "meta", "playbooks", "plugins", "roles", "tests"}
REQUIRED = ("plugins/modules/frelink_facts.py", "plugins/modules/frelink_restore.py",
            "plugins/module_utils/_frelink/scan/facts.py", "roles/frelink_kmod/tasks/main.yml",
            "roles/frelink_kmod/files/kmod/frelink.c", "roles/frelink_kmod/files/kmod/dkms.conf",
            "roles/frelink_kmod/files/kmod/uapi/frelink.h", "playbooks/recover.yml",
            "playbooks/audit.yml", "meta/runtime.yml")


def user_env(**extra):
    """A user's environment: none of the ANSIBLE_* settings make test uses for the checkout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(extra)
    return env


def _checkout_copy(root: Path) -> Path:
    copy_checkout(root)
    # what a used checkout has besides its sources
    link = root / ".build/collections/ansible_collections/frelink/frelink"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../../..")
    (root / ".pytest_cache/v/cache").mkdir(parents=True)
    (root / ".pytest_cache/v/cache/lastfailed").write_text("{}")
    (root / "tests/output/.tmp").mkdir(parents=True)
    for product in ("frelink.o", "frelink.ko", "frelink.mod.c", ".frelink.o.cmd", "compat-config.h"):
        (root / "roles/frelink_kmod/files/kmod" / product).write_text("build product\n")
    return root


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    work = tmp_path_factory.mktemp("collection")
    src = _checkout_copy(work / "checkout")
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                           str(work / "dist"), str(src)], capture_output=True, text=True, env=user_env(),
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = (work / "dist").glob("frelink-frelink-*.tar.gz")
    return tarball


def test_artifact_holds_only_the_collection(artifact):
    with tarfile.open(artifact) as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    links = [f"{m.name} -> {m.linkname}" for m in members if m.issym() or m.islnk()]
    assert not links, f"links in the artifact: {links}"
    assert {n.split("/", 1)[0] for n in names} <= ALLOWED_TOP, sorted({n.split("/", 1)[0] for n in names})
    assert not [n for n in names if any(part.startswith(".") for part in n.split("/"))]
    assert not [n for n in names if n.endswith((".o", ".ko", ".mod.c", ".pyc")) or "compat-config" in n]
    missing = [r for r in REQUIRED if r not in names]
    assert not missing, f"missing from the artifact: {missing}"


def test_installed_artifact_runs_frelink_facts(artifact, tmp_path):
    require_root()
    collections = tmp_path / "collections"
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(collections),
                           str(artifact)], capture_output=True, text=True, env=user_env(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = collections / "ansible_collections" / "frelink" / "frelink"
    assert (installed / "MANIFEST.json").is_file()
    # the role finds the module sources where frelink_kmod_source_dir says: inside the role
    assert (installed / "roles/frelink_kmod/files/kmod/dkms.conf").is_file()

    env = user_env(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    workdir = tmp_path / "elsewhere"  # no ansible.cfg, not the checkout
    workdir.mkdir()
    with deleted_open_file(tmp_path, size=3333) as held:
        proc = subprocess.run(
            [str(BIN / "ansible"), "localhost", "-c", "local", "-e",
             f"ansible_python_interpreter={sys.executable}", "-m", "frelink.frelink.frelink_facts",
             "-a", json.dumps({"include": [str(tmp_path) + "/*"]})],
            capture_output=True, text=True, env=env, cwd=workdir, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads(proc.stdout.partition("=>")[2])
        (orphan,) = result["ansible_facts"]["frelink"]["orphans"]
        assert (orphan["dev"], orphan["ino"], orphan["size"]) == (held.dev, held.ino, 3333)
    doc = subprocess.run([str(BIN / "ansible-doc"), "--json", "frelink.frelink.frelink_restore"],
                         capture_output=True, text=True, env=env, cwd=workdir, check=False)
    assert doc.returncode == 0, doc.stderr
    assert str(installed) in json.loads(doc.stdout)["frelink.frelink.frelink_restore"]["doc"]["filename"]


def test_role_works_with_only_the_collection_s_runtime_directories(artifact, tmp_path):
    """Installed, then cut down to meta/, plugins/, roles/ and playbooks/: the role still finds
    its module sources and version (check mode predicts the DKMS build of 0.1.0)."""
    require_root()
    collections = tmp_path / "collections"
    proc = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(collections),
                           str(artifact)], capture_output=True, text=True, env=user_env(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = collections / "ansible_collections" / "frelink" / "frelink"
    for entry in installed.iterdir():
        if entry.name not in ("meta", "plugins", "roles", "playbooks", "MANIFEST.json", "FILES.json"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    play = tmp_path / "role.yml"
    play.write_text("- hosts: localhost\n  connection: local\n  gather_facts: false\n  roles:\n"
                    "    - role: frelink.frelink.frelink_kmod\n")
    env = user_env(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--check", str(play), "-e", "frelink_kmod_install_packages=false",
                           "-e", "ansible_python_interpreter=%s" % sys.executable],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "Would build and install frelink 0.1.0 with DKMS" in proc.stdout, proc.stdout[-5000:]
