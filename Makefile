# Two entry points (see README.md): `make demo` and `make test`.
# Both install what they need first (scripts/bootstrap.sh: apt + a venv).
SHELL := /bin/bash
VENV = $(shell bash scripts/bootstrap.sh $(BOOTSTRAP) | tail -n 1)
PYTEST_ARGS ?=
# Two workers: a guest test keeps about one core busy (the emulated guest and the
# controller take turns), so two at once use both; TEST_JOBS=0 runs in one process.
TEST_JOBS ?= 2

.PHONY: demo test test-upgrade test-kernels bench install

demo: BOOTSTRAP = demo
demo:
	@venv=$(VENV) && PATH="$$venv/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.build/collections" \
		python scripts/demo.py

test:
	@venv=$(VENV) && PATH="$$venv/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.build/collections" \
		python -m pytest -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# The role across kernel and module upgrades in real VMs; too long for every run.
test-upgrade:
	@venv=$(VENV) && PATH="$$venv/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.build/collections" \
		python -m pytest -m upgrade tests/guest/test_role_upgrade.py $(PYTEST_ARGS)

# The kernels beyond the default suites, whole: the kmod suite (every scenario), its
# style checks and the role's molecule scenario on bullseye (5.10) and trixie-backports
# (7.3); make test runs a few kmod scenarios there (docs/harness.md).
test-kernels:
	@venv=$(VENV) && PATH="$$venv/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.build/collections" \
		FRELINK_KERNELS=all python -m pytest -n $(TEST_JOBS) --dist loadgroup --no-loadscope-reorder \
		-k "bullseye or trixie-backports" tests/guest/test_kmod.py tests/guest/test_kmod_style.py \
		tests/guest/test_molecule.py $(PYTEST_ARGS)

bench:
	@venv=$(VENV) && PATH="$$venv/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(CURDIR)/.build/collections" \
		bash bench/run-all.sh

install:
	@venv=$(VENV) && PATH="$$venv/bin:$$PATH" && rm -rf .build/dist && \
		ansible-galaxy collection build --output-path .build/dist . && \
		ansible-galaxy collection install --force .build/dist/frelink-frelink-*.tar.gz
