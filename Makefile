# Two entry points: `make demo` (pretrain + picture on Fashion-MNIST, CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= demo_output
DEMO_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test venv fashion-mnist clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

# The demo's data: Debian's dataset-fashion-mnist package, installed through apt when missing.
fashion-mnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST not found in $(FMNIST_DIR): install Debian's dataset-fashion-mnist"; exit 1; fi; \
	fi

demo: venv fashion-mnist
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_pretrain.py --model mae_vit_tiny_patch16 \
	  --model_kwargs decoder_embed_dim=128 decoder_depth=2 decoder_num_heads=4 \
	  --data_set fashion_mnist --data_path $(FMNIST_DIR) --data_limit 12000 --input_size 64 \
	  --batch_size 64 --epochs 5 --warmup_epochs 1 --blr 1.5e-3 --norm_pix_loss \
	  --num_workers 2 --print_freq 50 --save_freq 5 --vis_freq 1 --output_dir $(DEMO_DIR)/pretrain
	@echo "checkpoint, TensorBoard logs and reconstruction PNGs are in $(DEMO_DIR)/pretrain"

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
