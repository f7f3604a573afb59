"""Copy of this checkout's files (what git tracks or would track), for tests that need the tree elsewhere."""
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_checkout(root: Path) -> Path:
    """Copy every tracked or untracked-but-not-ignored file of the checkout into ROOT."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if not src.is_file():
            continue  # deleted in the work tree but still in the index
        dst = root / os.fsdecode(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    return root
