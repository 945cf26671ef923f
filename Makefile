# The two commands of the README:
#   make demo   install everything into .venv and run the main job on its built-in default
#   make test   install everything into .venv and run the whole test suite (lint included);
#               the encoder tests run again under each transformers 5.x (.venv/transformers-*)
.PHONY: demo test install install-transformers5 lint pytest pytest-transformers5 bench clean

# The tests that run again under each transformers 5.x of transformers5-versions.txt (the
# encoder's parity with transformers' own forward and processor, the grounder, the ONNX
# exports, the GPU check's dry run); .venv keeps 4.57.1, the official code's version.
TRANSFORMERS5_TESTS = test/test_encoder_*.py test/test_core_resize.py test/test_grounder.py \
	test/test_grounder_session.py test/test_accel_onnx.py test/test_cli.py test/test_gpu_check.py
TRANSFORMERS5_VERSIONS = $(shell grep -v '^\s*\#' transformers5-versions.txt)

install:
	@bash scripts/install.sh

install-transformers5: install
	@bash scripts/install_transformers5.sh

demo: install
	@bash scripts/demo.sh

test: install install-transformers5 lint pytest pytest-transformers5

lint:
	.venv/bin/ruff check .

pytest:
	.venv/bin/python -m pytest -q test

pytest-transformers5:
	@for v in $(TRANSFORMERS5_VERSIONS); do \
		echo "== transformers $$v"; \
		PYTHONPATH=.venv/transformers-$$v .venv/bin/python -m pytest -q $(TRANSFORMERS5_TESTS) \
			|| exit 1; \
	done

bench: install
	.venv/bin/python bench/run_all.py

clean:
	rm -rf .venv msg/objembed_msgs/build build *.egg-info
