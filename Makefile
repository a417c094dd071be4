# `make run` works on a fresh clone with Python 3.11+ and nothing else. `make test` also
# needs Chromium, PostgreSQL and RabbitMQ: as root on Debian it installs them, elsewhere
# it names them and stops (devservers/system_packages.sh).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export FLASK_APP := celery_worker:app

# The extension's own suite also runs against the coming Flask, Werkzeug and Flask-Login
# (pre-release wheels) and against the oldest Celery it supports, each in a venv of its own.
PACKAGE := packages/flask-celery-request
PRERELEASE_WHEELS ?= ../shared/wheels
OLDEST_CELERY ?= 5.5.0
NEXT_VENV := .venv-next
CELERY55_VENV := .venv-celery55

.PHONY: run test system-packages test-app test-package test-package-released test-package-prerelease \
        test-package-oldest-celery install install-dev migrate translations bench clean

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; found " + sys.version.split()[0] + ". Set PYTHON=python3.11 (or newer).")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.python-ok requirements.txt $(PACKAGE)/pyproject.toml
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/flask db upgrade

run: migrate
	$(BIN)/python -m devservers.run

test: system-packages test-app test-package

system-packages:
	@devservers/system_packages.sh

# Most tests wait on servers and workers, not the CPU: three pytest processes (whole files
# each, so a module's servers stay in one) finish in half the time on two cores. 0 = serial.
TEST_PROCESSES ?= 3

test-app: install-dev
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

test-package: test-package-released test-package-prerelease test-package-oldest-celery

test-package-released: install-dev
	cd $(PACKAGE) && $(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider

$(NEXT_VENV)/.installed: $(VENV)/.python-ok $(PACKAGE)/pyproject.toml
	$(PYTHON) -m venv $(NEXT_VENV)
	$(NEXT_VENV)/bin/pip install --quiet -e '$(PACKAGE)[test]'
	touch $@

test-package-prerelease: $(NEXT_VENV)/.installed
	@if ls $(PRERELEASE_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(NEXT_VENV)/bin/pip install --quiet --no-deps --force-reinstall $(PRERELEASE_WHEELS)/*.whl && \
		$(NEXT_VENV)/bin/python -c 'import flask, werkzeug, flask_login; from importlib.metadata import version; print("Pre-release run:", *(f"{n} {version(n)}" for n in ("flask", "werkzeug", "flask-login")))' && \
		cd $(PACKAGE) && $(CURDIR)/$(NEXT_VENV)/bin/python -m pytest -q -p no:cacheprovider; \
	else \
		echo "************************************************************************"; \
		echo "* NOT TESTED: no pre-release wheels in PRERELEASE_WHEELS=$(PRERELEASE_WHEELS)"; \
		echo "* Flask-Celery-Request was NOT run against Flask 3.2 / Werkzeug 3.2 /"; \
		echo "* Flask-Login 0.7. Point PRERELEASE_WHEELS at a folder of their wheels."; \
		echo "************************************************************************"; \
	fi

$(CELERY55_VENV)/.installed: $(VENV)/.python-ok $(PACKAGE)/pyproject.toml
	$(PYTHON) -m venv $(CELERY55_VENV)
	$(CELERY55_VENV)/bin/pip install --quiet -e '$(PACKAGE)[test]' 'celery[redis]==$(OLDEST_CELERY)'
	touch $@

test-package-oldest-celery: $(CELERY55_VENV)/.installed
	@$(CELERY55_VENV)/bin/python -c 'from importlib.metadata import version; print("Oldest-Celery run: celery", version("celery"), "kombu", version("kombu"))'
	cd $(PACKAGE) && $(CURDIR)/$(CELERY55_VENV)/bin/python -m pytest -q -p no:cacheprovider

# The catalogs: every marked string into messages.pot (N_ marks English stored in the
# database, translated where shown), merged into each language's messages.po (created
# when missing), compiled into the messages.mo files the app reads. The .mo files are
# committed, so a fresh clone runs without this step.
TRANSLATIONS := app/translations
TRANSLATION_LANGUAGES := ru zh
# pybabel compile writes an untranslated plural message with its English forms as the
# translation (https://github.com/python-babel/babel/issues/697), so Chinese, with one
# plural form, would say "5 minute" until it is translated: the .mo is written again
# without such messages, and gettext falls back to English for them.
WITHOUT_UNTRANSLATED_PLURALS := import sys; \
	from babel.messages.pofile import read_po; from babel.messages.mofile import write_mo; \
	catalog = read_po(open(sys.argv[1], "rb")); \
	[catalog.delete(m.id, m.context) for m in list(catalog) if m.pluralizable and not any(m.string)]; \
	write_mo(open(sys.argv[2], "wb"), catalog)

translations: install
	mkdir -p $(TRANSLATIONS)
	$(BIN)/pybabel extract -F babel.cfg -k _l -k N_ -c TRANSLATORS: --sort-by-file \
		--project=Microblog --no-wrap -o $(TRANSLATIONS)/messages.pot .
	@for lang in $(TRANSLATION_LANGUAGES); do \
		if [ -f $(TRANSLATIONS)/$$lang/LC_MESSAGES/messages.po ]; then \
			$(BIN)/pybabel update --no-wrap -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) -l $$lang || exit 1; \
		else \
			$(BIN)/pybabel init --no-wrap -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) -l $$lang || exit 1; \
		fi; \
	done
	$(BIN)/pybabel compile -d $(TRANSLATIONS)
	@for lang in $(TRANSLATION_LANGUAGES); do \
		$(BIN)/python -c '$(WITHOUT_UNTRANSLATED_PLURALS)' $(TRANSLATIONS)/$$lang/LC_MESSAGES/messages.po \
			$(TRANSLATIONS)/$$lang/LC_MESSAGES/messages.mo || exit 1; \
	done

bench: install-dev
	$(BIN)/python bench/context_overhead.py
	$(BIN)/python bench/export_scaling.py

clean:
	rm -rf $(VENV) $(NEXT_VENV) $(CELERY55_VENV) .pytest_cache
