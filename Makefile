# vPBX CallBack: the two commands are `make deploy` and `make test`.
SHELL := /bin/bash
INVENTORY ?= inventories/lab
VENV := .venv
PYTHON := /usr/bin/python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help venv tools deploy lists check test lint unit scenarios integration molecule e2e demo bench cluster cluster-down clean
.DEFAULT_GOAL := help

$(VENV)/.done: requirements.txt pyproject.toml tests/support/pyproject.toml
	@test -x $(PYTHON) || { echo "Debian's python3 is needed: apt-get install python3" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || apt-get install -y -qq python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -e . -e tests/support
	touch $@

## help: list these targets
help:
	@sed -n 's/^## \([a-z0-9-]*\): /\1\t/p' $(MAKEFILE_LIST) | expand -t 15

venv: $(VENV)/.done

## tools: install the test peers on this machine (SIPp, tshark, sox, redis-server)
tools: venv
	ansible-playbook -i localhost, playbooks/test_tools.yml

## deploy: deploy INVENTORY (default inventories/lab) onto its hosts
deploy: venv
	ansible-playbook -i $(INVENTORY) playbooks/site.yml

## lists: re-validate INVENTORY and replace only its routing data (lists, DIDs, schemes, extensions): seconds, no restart
lists: venv
	ansible-playbook -i $(INVENTORY) playbooks/lists.yml

## check: show what a deploy of INVENTORY would change, changing nothing
check: venv
	ansible-playbook -i $(INVENTORY) playbooks/site.yml --check --diff

## test: lint, unit tests, molecule (converge, idempotence, e2e verify), integration, the SIPp scenarios
test: lint unit molecule integration scenarios

## lint: ruff and ansible-lint
lint: venv
	ruff check vpbx kemi plugins callbackd cluster tests bench
	ansible-lint --profile production playbooks roles molecule

## unit: the unit tests (no service needed)
unit: venv
	pytest tests/unit -q

## scenarios: the e2e suite's SIPp scenarios proved on their own, without a PBX (root)
# Each caller against a callee or a peer playing the PBX on loopback
# addresses no lab part uses, pairs that must fail included, so that the
# scenarios' checks are known to bite.
scenarios: tools
	tests/e2e/scenarios/selfcheck.sh
	tests/e2e/scenarios/selfcheck_far_end.sh

## integration: callbackd's SIP stack, RTPengine and the store against their own peers
integration: tools
	pytest tests/integration -q -p no:cacheprovider

## molecule: the single-host lab (scenario default), then the lab of hosts (cluster)
molecule: venv
	molecule test
	molecule test -s cluster

## e2e: the end-to-end suite alone, against what is deployed now
e2e: tools
	pytest tests/e2e -v

## cluster: build the lab of hosts on this machine (network namespaces, cluster/) and deploy inventories/cluster onto it
cluster: venv
	python -m cluster up
	ansible-playbook -i inventories/cluster playbooks/site.yml

## cluster-down: end the lab of hosts and remove its files and network
cluster-down: venv
	python -m cluster down

## bench: the figures of bench/RESULTS.md, on the lab deploy (not part of test)
bench: tools
	python bench/decision.py
	python bench/deployed_router.py
	python bench/callback_latency.py
	python bench/bridged_callbacks.py
	python bench/reload.py
	python bench/lists.py
	python bench/flood.py
	python bench/recovery.py
	python bench/memory.py

## demo: one callback on the lab deploy, told as a story, with its CDR line
demo: tools
	python tests/e2e/demo.py

## clean: remove the virtualenv and the caches
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
