# medseg developer commands. `make demo` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch for machines without an NVIDIA GPU (available offline on our build machines);
# with a GPU, pip resolves torch from pyproject.toml (a CUDA build).
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test test-fast sample-data phantoms model screenshot bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: torch comes from pyproject.toml"; \
	else \
		echo "no GPU: installing the CPU build $(TORCH_CPU)"; \
		$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev,napari]"
	touch $@

# The main job: segment the bundled sample DICOM series and score it against its ground truth.
demo: setup
	$(BIN)/medseg segment sample_data/phantom_ct_dicom -o out/sample_mask.nii.gz \
		--reference sample_data/phantom_ct_labels.nii.gz

# napari needs a display: under xvfb-run when there is none (Debian package xvfb); without
# one the viewer tests skip with that reason.
XVFB := $(if $(DISPLAY),,$(shell command -v xvfb-run >/dev/null 2>&1 && echo "xvfb-run -a"))

test: setup
	env -u QT_QPA_PLATFORM $(XVFB) $(BIN)/python -m pytest

test-fast: setup
	env -u QT_QPA_PLATFORM $(XVFB) $(BIN)/python -m pytest -m "not slow"

# Regenerate the sample case (phantom seed 7, NIfTI + DICOM + labels).
sample-data: setup
	$(BIN)/medseg sample-data sample_data

# Regenerate the bundled model (about 75 min on 2 CPU cores): 72 phantoms, one training command;
# the best bundle (by validation Dice) becomes the default model.
phantoms: setup
	$(BIN)/medseg phantom runs/phantoms72 --seeds 100-171

model: phantoms
	$(BIN)/medseg train runs/phantoms72 -o runs/bundled --epochs 60 --steps-per-epoch 60 --crop 128 --loss ce+dice --seed 0 --name medseg-phantom-abdomen-ct
	rm -rf sample_data/model && cp -r runs/bundled/best sample_data/model

# Refresh the README's napari screenshot (a real viewer under Xvfb).
screenshot: setup
	env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/make_screenshot.py

bench: setup
	$(BIN)/python benchmarks/bench_segment.py

clean:
	rm -rf $(VENV) out runs .pytest_cache
