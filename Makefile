# The two commands of the README:
#   make demo   a demo deploy against the local throwaway server
#   make test   every check and test (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: venv link engine images test lint sanity pytest molecule local-server bootstrap-local demo bench clean

venv: $(VENV)/.installed link
$(VENV)/.installed: requirements-dev.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# Makes `onebox.platform.*` resolve from this checkout (see ansible.cfg).
link:
	@mkdir -p .ansible/collections/ansible_collections/onebox
	@ln -sfn $(CURDIR) .ansible/collections/ansible_collections/onebox/platform

engine:
	bash scripts/engine.sh

images: venv engine
	bash scripts/images.sh all

test:
	bash scripts/test.sh

lint: venv
	bash scripts/test.sh lint

sanity: venv
	bash scripts/test.sh sanity

pytest: venv engine
	bash scripts/test.sh pytest

molecule: venv images
	bash scripts/test.sh molecule

local-server: engine
	bash scripts/local-server.sh up

bootstrap-local: venv local-server
	ansible-playbook -i inventories/local playbooks/bootstrap.yml

demo:
	bash scripts/demo.sh

# Benchmarks (not part of make test): bench/run.sh, figures in bench/RESULTS.md.
bench: venv link
	bash bench/run.sh

clean:
	bash scripts/local-server.sh down
	rm -rf .ansible/collections tests/output
