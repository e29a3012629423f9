# Two commands: `make demo` (the whole pipeline on the shipped EMOPIA sample, tiny preset,
# CPU, a few minutes) and `make test`. Both create and reuse a project-local .venv.
# TORCH selects the torch requirement, e.g. a CUDA build: make demo TORCH="torch==2.13.0 --index-url URL"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo_run
DEMO_EPOCHS ?= 60
PRIOR_EPOCHS ?= 60
# The demo trains a tiny model for about a minute: a 10x learning rate and 256-step pieces.
DEMO_FLAGS := --preset tiny --max_len 256 --lr 1e-3
# The tiny preset gains nothing from intra-op threads, and spin-waiting OpenMP threads
# slow small ops down badly on a busy machine: one thread per process.
export OMP_NUM_THREADS ?= 1
# libgomp reads how waiting threads wait once, when torch loads, so the launcher sets it: a
# short spin, so that a waiting thread soon yields a core that another process needs
# (run/threads.py; scripts launched directly take it from the environment too).
export GOMP_SPINCOUNT ?= 30000
# The tests start many Python processes: bytecode caches let each one skip compiling the
# project again, so an environment that turns them off (PYTHONDONTWRITEBYTECODE) stops here.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test venv clean-demo reproduce

# The reproduction study (see README): make reproduce MIDI_DIR=path/to/EMOPIA/midis
STUDY_PRESET ?= small
STUDY_OUT ?= study_run

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

reproduce: venv
	@test -n "$(MIDI_DIR)" || { echo "error: give MIDI_DIR=folder of Q{1-4}_*.mid clips (e.g. all of EMOPIA)"; exit 2; }
	$(PY) reproduce.py --preset $(STUDY_PRESET) --midi_dir $(MIDI_DIR) --out $(STUDY_OUT)

test: venv
	$(PY) -m pytest -q

demo: venv
	@echo "== Generating from the shipped pretrained models (pretrained/, see its README) =="
	$(PY) generate.py --VQ_prior pretrained/prior.pt --VQ_VAE pretrained/muser.pt --music_file pretrained \
		--out_root $(DEMO)/generate_midi --n_per_emotion 2
	@echo "== Training a tiny model on the shipped sample, then the whole pipeline =="
	$(PY) prepare_data.py --midi_dir data/sample/midis --out_dir $(DEMO)/data --name emopia
	$(PY) MusER.py --data_path $(DEMO)/data/emopia_data.npz --dataset emopia $(DEMO_FLAGS) \
		--Epoch $(DEMO_EPOCHS) --model_path $(DEMO)/saved_models/MusER_TRANS_CA_GE_emopia --overwrite
	$(PY) VQ_explore.py --data_path $(DEMO)/data/emopia_data.npz \
		--VQ_VAE $(DEMO)/saved_models/MusER_TRANS_CA_GE_emopia --plot_flag True \
		--vq_dict_path $(DEMO)/data/MusER_TRANS_CA_GE_emopia_VQ_dict.data \
		--figure_dir $(DEMO)/figures/MusER_TRANS_CA_GE_emopia
	$(PY) Prior_train.py --data_path $(DEMO)/data/emopia_data.npz --dataset emopia --preset tiny --lr 1e-3 \
		--VQ_VAE $(DEMO)/saved_models/MusER_TRANS_CA_GE_emopia \
		--vq_dict_path $(DEMO)/data/MusER_TRANS_CA_GE_emopia_VQ_dict.data \
		--Epoch $(PRIOR_EPOCHS) --model_path $(DEMO)/saved_models/Prior_TRANS_CA_GE_emopia --overwrite
	$(PY) generate.py --VQ_prior $(DEMO)/saved_models/Prior_TRANS_CA_GE_emopia \
		--VQ_VAE $(DEMO)/saved_models/MusER_TRANS_CA_GE_emopia --music_file demo \
		--out_root $(DEMO)/generate_midi --n_per_emotion 4
	$(PY) train_evaluator.py --data_path $(DEMO)/data/emopia_data.npz --split clip \
		--out $(DEMO)/saved_models/emotion_evaluator.json
	$(PY) compute_metrics.py --generated $(DEMO)/generate_midi/demo_data.data \
		--data_path $(DEMO)/data/emopia_data.npz --out_dir $(DEMO)/metrics \
		--evaluator $(DEMO)/saved_models/emotion_evaluator.json
	$(PY) element_transfer.py --VQ_VAE $(DEMO)/saved_models/MusER_TRANS_CA_GE_emopia \
		--data_path $(DEMO)/data/emopia_data.npz --source Q4 --target Q1 --elements velocity \
		--n_pieces 2 --evaluator $(DEMO)/saved_models/emotion_evaluator.json --out_dir $(DEMO)/transfer
	@echo; echo "Generated MIDI:"; ls $(DEMO)/generate_midi/demo/*.mid
	@echo; echo "Figures:"; find $(DEMO) -name '*.png' | sort
	@echo; echo "Tables: $(DEMO)/metrics/metrics.md $(DEMO)/transfer/transfer.md $(DEMO)/figures/MusER_TRANS_CA_GE_emopia/silhouette.md"
	@echo; echo "Listening pages: $(DEMO)/generate_midi/pretrained/index.html $(DEMO)/generate_midi/demo/index.html $(DEMO)/transfer/index.html"
	@echo "Open in a browser: $(abspath $(DEMO))/metrics/index.html"

clean-demo:
	rm -rf $(DEMO)
