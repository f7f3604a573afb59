"""Shared test setup: the repo root on sys.path (for `import harness`) and guest fixtures."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import harness  # noqa: E402  (needs the path above)


def pytest_collection_finish(session):
    """A test on the debug kernel is selected: start its one-time build now, in the
    background (harness.debug_kernel.build_in_background), not when that test comes."""
    if session.config.option.collectonly:
        return
    if any(getattr(item, "callspec", None) and item.callspec.params.get("kmod_guest") == "debug"
           for item in session.items):
        session.config.debug_kernel_build = harness.debug_kernel_build_in_background()


@pytest.fixture(scope="session")
def guest_env():
    """guest_env(suite) -> harness.Env: the suite's cached image, built once when missing."""
    envs = {}

    def get(suite):
        if suite not in envs:
            envs[suite] = harness.prepare(suite)
        return envs[suite]

    return get


@pytest.fixture(scope="session")
def shared_guest():
    """shared_guest(suite) -> a booted harness.Guest reused by every test of the session.

    For tests that only read or clean up after themselves; a test that needs a pristine
    machine (or reboots it) should use its own `with harness.Guest(suite)` instead. A
    guest whose QEMU died is replaced by a fresh one.
    """
    guests = {}

    def get(suite):
        guest = guests.get(suite)
        if guest is None or guest.process is None or guest.process.poll() is not None:
            if guest is not None:
                guest.stop()
            guest = guests[suite] = harness.Guest(suite).start()
        return guest

    yield get
    for guest in guests.values():
        guest.stop()
