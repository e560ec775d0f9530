# vPBX CallBack: the two commands are `make deploy` and `make test`.
SHELL := /bin/bash
INVENTORY ?= inventories/lab
VENV := .venv
PYTHON := /usr/bin/python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: venv deploy check test lint unit integration molecule e2e demo bench cluster cluster-down clean

$(VENV)/.done: requirements.txt pyproject.toml
	@test -x $(PYTHON) || { echo "Debian's python3 is needed: apt-get install python3" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || apt-get install -y -qq python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -e .
	touch $@

venv: $(VENV)/.done

## deploy: deploy INVENTORY (default inventories/lab) onto its hosts
deploy: venv
	ansible-playbook -i $(INVENTORY) playbooks/site.yml

## check: show what a deploy of INVENTORY would change, changing nothing
check: venv
	ansible-playbook -i $(INVENTORY) playbooks/site.yml --check --diff

## test: lint, unit tests, molecule (converge, idempotence, e2e verify), integration
test: lint unit molecule integration

lint: venv
	ruff check vpbx kemi plugins callbackd cluster tests bench
	ansible-lint --profile production playbooks roles molecule

unit: venv
	pytest tests/unit -q

# The SIP stack and RTPengine against their own peers (needs what converge installs).
integration: venv
	pytest tests/integration -q -p no:cacheprovider

# The single-host lab (scenario default), then the lab of hosts (cluster).
molecule: venv
	molecule test
	molecule test -s cluster

## e2e: the end-to-end suite alone, against what is deployed now
e2e: venv
	pytest tests/e2e -v

## cluster: build the lab of hosts on this machine (network namespaces, cluster/) and deploy inventories/cluster onto it
cluster: venv
	python -m cluster up
	ansible-playbook -i inventories/cluster playbooks/site.yml

## cluster-down: end the lab of hosts and remove its files and network
cluster-down: venv
	python -m cluster down

## bench: the figures of bench/RESULTS.md, on the lab deploy (not part of test)
bench: venv
	python bench/decision.py
	python bench/callback_latency.py
	python bench/bridged_callbacks.py
	python bench/reload.py
	python bench/flood.py
	python bench/recovery.py

## demo: one callback on the lab deploy, told as a story, with its CDR line
demo: venv
	python tests/e2e/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
