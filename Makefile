# Two entry points: `make demo` (pretrain, picture and linear probes on Fashion-MNIST, CPU) and `make test`.
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

# Linear probe of the pretrained encoder and of a random one: global-pool features, BN + linear head, LARS.
# (LARS moves weights by lr x 1e-3 x |w| per step: a short probe needs a large lr, as ImageNet's 6.4.)
PROBE := --model vit_tiny_patch16 --global_pool --data_set fashion_mnist --data_path $(FMNIST_DIR) \
  --data_limit 12000 --input_size 64 --batch_size 256 --epochs 3 --warmup_epochs 0.5 --blr 16 \
  --num_workers 2 --print_freq 20 --save_freq 100

demo: venv fashion-mnist
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_pretrain.py --model mae_vit_tiny_patch16 \
	  --model_kwargs decoder_embed_dim=128 decoder_depth=2 decoder_num_heads=4 \
	  --data_set fashion_mnist --data_path $(FMNIST_DIR) --data_limit 12000 --input_size 64 \
	  --batch_size 64 --epochs 5 --warmup_epochs 1 --blr 1.5e-3 --norm_pix_loss \
	  --num_workers 2 --print_freq 50 --save_freq 5 --vis_freq 1 --output_dir $(DEMO_DIR)/pretrain
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_linprobe.py $(PROBE) \
	  --finetune $(DEMO_DIR)/pretrain/checkpoint-4.pth --output_dir $(DEMO_DIR)/linprobe_pretrained
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_linprobe.py $(PROBE) --output_dir $(DEMO_DIR)/linprobe_random
	@echo "pretraining checkpoint, TensorBoard logs and reconstruction PNGs: $(DEMO_DIR)/pretrain"
	@echo "Fashion-MNIST test accuracy of a linear probe (10,000 images):"
	@$(PY) -m util.probe_report pretrained=$(DEMO_DIR)/linprobe_pretrained random=$(DEMO_DIR)/linprobe_random

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
