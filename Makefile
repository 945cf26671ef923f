# The two commands of the README:
#   make demo   install everything into .venv and run the main job on its built-in default
#   make test   install everything into .venv and run the whole test suite (lint included)
.PHONY: demo test install lint pytest bench clean

install:
	@bash scripts/install.sh

demo: install
	@bash scripts/demo.sh

test: install lint pytest

lint:
	.venv/bin/ruff check .

pytest:
	.venv/bin/python -m pytest -q test

bench: install
	.venv/bin/python bench/run_all.py

clean:
	rm -rf .venv msg/objembed_msgs/build build *.egg-info
