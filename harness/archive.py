"""Is a cached image's kernel still the archive's newest? One line when it is not.

Debian moves a suite's kernel every few weeks (an ABI bump gives a new release name).
A cached image keeps its kernel until it is rebuilt, so the suite stays stable; this
says when the archive has moved on. It asks the host's apt, with the image's own dpkg
status and private list and cache dirs: nothing of the host's apt state is read or
changed but its configuration (proxy, keyrings). Asked at most every CHECK_INTERVAL per
suite; FRELINK_ARCHIVE_CHECK=0 turns it off (e.g. offline).
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

from . import debian
from .util import file_lock, progress, suite_dir, write_atomic

KERNEL_PACKAGE = "linux-image-amd64"
CHECK_INTERVAL = 6 * 3600
APT_TIMEOUT = 60

_told = set()


def _apt_options(suite, status: Path, state: Path):
    return [
        "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={state / 'empty'}",
        "-o", f"Dir::Etc::Preferences={state / 'preferences'}",
        "-o", f"Dir::Etc::PreferencesParts={state / 'empty'}",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", f"Dir::State::status={status}",
        "-o", "APT::Architecture=amd64",
        "-o", "Acquire::Languages=none",
    ] + [arg for option in debian.apt_options(suite) for arg in ("-o", _command_line_form(option))]


def _command_line_form(option: str) -> str:
    """'Acquire::Check-Valid-Until "false";' (apt.conf) as apt's -o takes it."""
    name, value = option.rstrip(";").split(None, 1)
    return name + "=" + value.strip('"')


def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=APT_TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)


def compare(suite: str, status: Path, state: Path) -> dict:
    """Installed and candidate versions of the kernel metapackage for SUITE.

    STATUS is a dpkg status file (the image's); STATE a directory for apt's lists.
    Returns {"installed", "candidate", "candidate_release", "newer"} or {"error": text}.
    """
    for sub in ("lists/partial", "cache/archives/partial", "empty"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text("\n".join(debian.apt_source_lines(suite)) + "\n")
    # the image's pin (a backports kernel), else its candidate is the release's older one
    (state / "preferences").write_text(debian.apt_preferences(suite))
    options = _apt_options(suite, status, state)
    try:
        update = _run(["apt-get", "-qq", *options, "update"])
        if update.returncode != 0:
            return {"error": "apt-get update failed: " + " ".join(update.stderr.split())[-300:]}
        policy = _run(["apt-cache", *options, "policy", KERNEL_PACKAGE]).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": f"apt did not answer: {error}"}
    found = dict(re.findall(r"^\s*(Installed|Candidate): (\S+)", policy, re.M))
    installed, candidate = found.get("Installed", "(none)"), found.get("Candidate", "(none)")
    if candidate == "(none)":
        return {"error": f"the archive has no {KERNEL_PACKAGE} for {suite}"}
    newer = installed == "(none)" or _run(
        ["dpkg", "--compare-versions", candidate, "gt", installed]).returncode == 0
    show = _run(["apt-cache", *options, "show", f"{KERNEL_PACKAGE}={candidate}"]).stdout
    release = re.search(r"^Depends:.*?linux-image-(\d\S*?)(?:-unsigned)?[\s,(]", show, re.M)
    return {"installed": installed, "candidate": candidate, "newer": newer,
            "candidate_release": release.group(1) if release else None}


def _recorded(stamp: Path, env):
    try:
        result = json.loads(stamp.read_text())
        if result.get("image") == env.key and time.time() - result["checked"] < CHECK_INTERVAL:
            return result
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def check_image(env) -> None:
    """Print one line when the archive's kernel for ENV's suite is newer than the image's."""
    image = (str(env.rootfs), env.key)
    if os.environ.get("FRELINK_ARCHIVE_CHECK", "1") == "0" or image in _told:
        return
    _told.add(image)
    stamp = suite_dir(env.suite) / "archive-check.json"
    result = _recorded(stamp, env)
    if result is None:
        with file_lock(suite_dir(env.suite) / "archive-check.lock"):
            result = _recorded(stamp, env)  # checked by whoever held the lock
            if result is None:
                result = compare(env.suite, env.rootfs / "var/lib/dpkg/status",
                                 suite_dir(env.suite) / "archive-apt")
                result.update(image=env.key, checked=time.time())
                # a failed check is kept too: an offline host must not wait for apt in every process
                write_atomic(stamp, json.dumps(result) + "\n")
    if "error" in result:
        progress(env.suite, f"could not check whether the archive has a newer kernel ({result['error']})")
    elif result["newer"]:
        progress(env.suite, (
            f"the cached image has kernel {env.kernel_release} ({KERNEL_PACKAGE} {result['installed']}); "
            f"the archive now has {result['candidate']} (kernel {result['candidate_release'] or 'unknown'}). "
            "The cached image stays in use; rebuild it with: "
            f"python -m harness prepare {env.suite} --rebuild"))
