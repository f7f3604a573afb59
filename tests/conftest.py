"""Shared test setup: the repo root on sys.path (for `import harness`), guest fixtures, and
the work units of the parallel run.

`make test` runs two pytest-xdist workers. A work unit runs whole in one worker: a test
file, or, where its tests share a module-scoped parametrized fixture (one guest per
suite), the file and that parameter. xdist's own --dist loadgroup cannot say that under
pytest 9 (it renames items, which pytest 9 ignores), so the controller schedules with
WorkUnitScheduling below, from the units the workers report as they collect.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import harness  # noqa: E402  (needs the path above)

# seconds each work unit took in the last run, for the order of the next (longest first)
UNIT_SECONDS = harness.util.cache_root() / "test-unit-seconds.json"
# a unit no run has timed yet: guess by its marks (guest tests take minutes, host seconds)
UNTIMED_SECONDS = {"slow": 3600, "guest": 1800}
# where the workers leave {nodeid: unit} for the controller's scheduler
UNITS_DIR_ENV = "FRELINK_WORK_UNITS_DIR"


def _work_unit(item):
    unit = item.nodeid.split("::", 1)[0]
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        scopes = getattr(callspec, "_arg2scope", {})
        shared = [str(value) for name, value in callspec.params.items()
                  if getattr(scopes.get(name), "value", "function") != "function"]
        if shared:
            unit += "[%s]" % "-".join(shared)
    return unit


def _timed_units():
    try:
        return json.loads(UNIT_SECONDS.read_text())
    except (OSError, ValueError):
        return {}


def pytest_configure(config):
    """The controller of a parallel run makes the directory its workers report units to
    (they inherit its environment)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "numprocesses", None):
        os.environ[UNITS_DIR_ENV] = config.units_dir = tempfile.mkdtemp(prefix="frelink-units-")


def pytest_unconfigure(config):
    if getattr(config, "units_dir", None):
        harness.util.remove_tree(Path(config.units_dir))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Each test's work unit, then the units longest first, as the last run timed them:
    greedy scheduling in that order keeps both workers busy until the end."""
    units = {item.nodeid: _work_unit(item) for item in items}
    for item in items:
        item.user_properties.append(("work_unit", units[item.nodeid]))
    timed = _timed_units()
    estimate, first = {}, {}
    for index, item in enumerate(items):
        unit = units[item.nodeid]
        first.setdefault(unit, index)
        guess = max([UNTIMED_SECONDS.get(mark.name, 0) for mark in item.iter_markers()], default=0)
        estimate[unit] = timed.get(unit, max(guess, estimate.get(unit, 0)))
    order = {item.nodeid: (-estimate[units[item.nodeid]], first[units[item.nodeid]], index)
             for index, item in enumerate(items)}
    items.sort(key=lambda item: order[item.nodeid])
    worker, units_dir = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(UNITS_DIR_ENV)
    if worker and units_dir:
        harness.util.write_atomic(Path(units_dir) / ("%s.json" % worker), json.dumps(units))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling, with the work units the workers reported as scopes."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        units = None

        def _split_scope(self, nodeid):
            if self.units is None:  # first called once every worker has collected
                self.units = {}
                for reported in Path(os.environ[UNITS_DIR_ENV]).glob("*.json"):
                    self.units.update(json.loads(reported.read_text()))
            return self.units.get(nodeid, nodeid)

    return WorkUnitScheduling(config, log)


def pytest_runtest_logreport(report):
    """Each unit's time (setup, call and teardown) as the controller receives the reports."""
    unit = dict(report.user_properties).get("work_unit")
    if unit is not None:
        _seconds_this_run[unit] = _seconds_this_run.get(unit, 0.0) + (report.duration or 0.0)


_seconds_this_run = {}


def _part_of_units(config):
    """Did this run select only some tests of a unit (-k, node ids, FRELINK_KMOD_ONLY)? Its
    times would then stand for whole units and put them last in the next full run."""
    return bool(config.option.keyword or os.environ.get("FRELINK_KMOD_ONLY")
                or any("::" in arg for arg in config.args))


def pytest_sessionfinish(session, exitstatus):
    """The controller (or a run without workers) keeps the units' times for the next run."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not _seconds_this_run or _part_of_units(session.config):
        return
    timed = _timed_units()
    timed.update({unit: round(value, 1) for unit, value in _seconds_this_run.items()})
    try:
        harness.util.write_atomic(UNIT_SECONDS, json.dumps(timed, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def pytest_collection_finish(session):
    """A test on the debug kernel is selected: start its one-time build now, in the
    background (harness.debug_kernel.build_in_background), not when that test comes.
    In a parallel run the first worker starts it (the build lock serialises the rest)."""
    if session.config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
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
