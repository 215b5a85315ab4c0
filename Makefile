# medseg developer commands. `make demo` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch for machines without an NVIDIA GPU (available offline on our build machines);
# with a GPU, pip resolves torch from pyproject.toml (a CUDA build).
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test test-fast sample-data phantoms model eval wheel screenshot bench clean

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
	$(BIN)/python -m pip install --quiet -e ".[dev,napari,dicom]"
	$(BIN)/python -m pip install --quiet --no-deps "rt-utils==1.2.7"  # test-only: RTSTRUCTs written by another tool
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

# Regenerate the sample case (phantom seed 7, NIfTI + DICOM + labels). It ships inside the package
# (medseg/resources/; `sample_data` is a link to it).
sample-data: setup
	$(BIN)/medseg sample-data medseg/resources

# Regenerate the bundled model (about 95 min on 2 CPU cores), in five trainings and two averages:
# 1. 96 phantoms of varied style (2.5 min), 150 epochs from scratch (about 50 min); the best bundle
#    (by validation Dice, measured every 5 epochs) gets the post-processing main-piece (organ-label
#    pieces far from each organ's largest become background; the weights unchanged).
# 2. The same 96 plus 32 arterial phantoms (9 with a hyper-enhancing tumour), 45 epochs from
#    bundle 1 with the tumour's contrast redrawn hypo or hyper (--lesion-contrast) (about 17 min).
# 3. Those 128 plus 24 portal-venous phantoms, 30 epochs from bundle 2 (about 11 min).
# 4. Those 152 plus 32 more arterial phantoms, 30 epochs from bundle 3 (about 6 min); bundles 3
#    and 4 averaged (medseg average-models: a model soup) into runs/soupCD.
# 5. The same 184 phantoms, 30 epochs from runs/soupCD (about 6 min); runs/soupCD and bundle 5
#    averaged (fine-tuned weights interpolated with their start, as WiSE-FT does) into runs/soup,
#    the default model, packaged in medseg/resources/model.
# The folder names are the ones the shipped card's commands record. The 2.5D context is 3 mm
# (--context-mm) and foreground patches are drawn class by class (--foreground-sampling class):
# both training defaults. The README (the bundled default model) says what each training changed;
# trainings 1-4 of the shipped model ran before the labels' resampling was put on the image's grid
# (medseg.slices.resize_slices), so a run now gives a model trained on better-aligned labels
# throughout, not the same weights.
TRAIN_DEFAULT := --val-every 5 --steps-per-epoch 60 --crop 128 --loss ce+dice --name medseg-phantom-abdomen-ct

phantoms: setup
	$(BIN)/medseg phantom runs/phantoms96 --seeds 100-195 --varied
	rm -rf runs/p96art && cp -r runs/phantoms96 runs/p96art
	$(BIN)/medseg phantom runs/p96art --seeds 400-431 --varied --phase arterial --add
	rm -rf runs/p96artvpv && cp -r runs/p96art runs/p96artvpv
	$(BIN)/medseg phantom runs/p96artvpv --seeds 600-623 --varied --phase portal-venous --add
	rm -rf runs/p152art && cp -r runs/p96artvpv runs/p152art
	$(BIN)/medseg phantom runs/p152art --seeds 432-463 --varied --phase arterial --add

model: phantoms
	$(BIN)/medseg train runs/phantoms96 -o runs/bundled --epochs 150 --seed 0 $(TRAIN_DEFAULT)
	rm -rf runs/bundled-pp && $(BIN)/medseg set-postprocessing runs/bundled/best main-piece -o runs/bundled-pp
	$(BIN)/medseg train runs/p96art -o runs/ftA --init runs/bundled-pp --epochs 45 --lesion-contrast 0.16 \
		--postprocessing main-piece --lr 5e-4 --seed 0 $(TRAIN_DEFAULT)
	$(BIN)/medseg train runs/p96artvpv -o runs/ftC --init runs/ftA/best --epochs 30 --lesion-contrast 0.16 \
		--postprocessing main-piece --lr 3e-4 --seed 1 $(TRAIN_DEFAULT)
	$(BIN)/medseg train runs/p152art -o runs/ftD --init runs/ftC/best --epochs 30 --lesion-contrast 0.16 \
		--postprocessing main-piece --lr 5e-4 --seed 2 $(TRAIN_DEFAULT)
	rm -rf runs/soupCD && $(BIN)/medseg average-models runs/ftC/best runs/ftD/best -o runs/soupCD
	$(BIN)/medseg train runs/p152art -o runs/ftF --init runs/soupCD --epochs 30 --lesion-contrast 0.16 \
		--postprocessing main-piece --lr 3e-4 --seed 6 $(TRAIN_DEFAULT)
	rm -rf runs/soup && $(BIN)/medseg average-models runs/soupCD runs/ftF/best -o runs/soup
	rm -rf medseg/resources/model && cp -r runs/soup medseg/resources/model

# The installable wheel (model, sample case and napari plugin inside) in dist/. Offline: the build
# uses the setuptools of .venv (no build isolation).
# The README's quality table: the default model on ten phantoms it never saw (about 2 min on
# 2 CPU cores), scored by `medseg evaluate`, the table rewritten from its evaluation.json.
UNSEEN_SEEDS ?= 1,2,3,4,5,6,7,8,2024,31337

eval: setup
	$(BIN)/medseg phantom runs/unseen --seeds $(UNSEEN_SEEDS) --overwrite
	$(BIN)/medseg evaluate --model medseg/resources/model --dataset runs/unseen -o runs/unseen-eval --device cpu
	$(BIN)/python docs/eval_table.py runs/unseen-eval/evaluation.json --readme README.md
	$(BIN)/python docs/eval_phases.py --model medseg/resources/model --seeds $(UNSEEN_SEEDS) --work runs/phases
	$(BIN)/python docs/real_overlays.py --model medseg/resources/model --out docs/real_ct

wheel: setup
	rm -rf build  # stale modules there would end up in the wheel
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

# Refresh the README's napari screenshot (a real viewer under Xvfb).
screenshot: setup
	env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/make_screenshot.py

bench: setup
	$(BIN)/python benchmarks/bench_segment.py

clean:
	rm -rf $(VENV) out runs .pytest_cache build dist
