# natmap's two commands: `make demo` and `make test` (run as root on Debian).
# Each installs what it needs when it is missing: Debian packages, then a
# .venv with natmap in editable mode and its test and iptables extras.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.natmap-installed
DEBS   := nftables iptables libnftables1 iproute2 conntrack
# podman with its CNI backend, for the CNI plugin's proof (tests/kernel/test_kernel_cni_podman.py)
CNI_DEBS := podman containernetworking-plugins busybox-static runc

.PHONY: test demo bench bench-cni stress deps debs venv bytecode clean

test: deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: deps
	$(BIN)/python examples/tutorial.py

bench: deps
	$(BIN)/python bench/bench.py

# podman run + rm through natmap-cni vs the stock portmap (about 4 minutes).
bench-cni: deps
	$(BIN)/python bench/cni_bench.py

# The long reliability tests at full count (make test runs them reduced).
stress: deps
	STRESS=1 $(BIN)/python -m pytest tests/kernel/test_kernel_reliability.py tests/kernel/test_kernel_fuzz.py \
		tests/kernel/test_kernel_guest.py::test_concurrent_publish_all_in_two_tables_never_yields_one_port_twice $(PYTEST_ARGS)

deps: debs venv bytecode

# Compiled once here, because Python may be told not to write bytecode
# (PYTHONDONTWRITEBYTECODE, as on our CI machines); every `natmap` command
# would otherwise compile natmap's sources first, about 17 ms of a 60 ms start.
bytecode: venv
	@$(BIN)/python -m compileall -q natmap natmap_cni.py

# Only the packages that are missing, so a machine that has them needs no network.
debs:
	@missing=""; for p in $(DEBS) $(CNI_DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,iptables]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
