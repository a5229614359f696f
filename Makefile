# Two entry points: `make demo` (pretrain, picture and linear probes on Fashion-MNIST, CPU) and `make test`.
# The segmentation extra (with detection): `make seg` (onedl-mmcv built once into WHEEL_CACHE), `make seg-demo`
# (its pretraining alone: `make demo-seg-pretrain`), `make det-demo`.
# Every install step is tools/install.sh's, the same the Dockerfile and CI run; the targets only call it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= demo_output
DEMO_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements.txt)
WHEEL_CACHE ?= $(HOME)/.cache/mim-wheels/torch-$(TORCH_VERSION)
INSTALL := PYTHON=$(PYTHON) VENV=$(VENV) WHEEL_CACHE=$(WHEEL_CACHE) FMNIST_DIR=$(FMNIST_DIR) tools/install.sh

.PHONY: demo demo-pretrain demo-seg-pretrain test venv seg seg-demo det-demo fashion-mnist clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt tools/install.sh
	$(INSTALL) venv

# The demo's data: Debian's dataset-fashion-mnist package, installed through apt when missing.
fashion-mnist:
	$(INSTALL) fashion-mnist

# Linear probe of the pretrained encoder and of a random one: global-pool features, BN + linear head, LARS.
# (LARS moves weights by lr x 1e-3 x |w| per step: a short probe needs a large lr, as ImageNet's 6.4.)
PROBE := --model vit_tiny_patch16 --global_pool --data_set fashion_mnist --data_path $(FMNIST_DIR) \
  --data_limit 12000 --input_size 64 --batch_size 256 --epochs 3 --warmup_epochs 0.5 --blr 16 \
  --num_workers 2 --print_freq 20 --save_freq 100

# the segmentation extra: mmcv's ops compiled once (~30 CPU-minutes) into a cache outside the repository
seg: $(VENV)/.seg-installed

$(VENV)/.seg-installed: $(VENV)/.installed requirements-seg.txt requirements-seg-nodeps.txt tools/install.sh
	$(INSTALL) seg

demo: demo-pretrain
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_linprobe.py $(PROBE) \
	  --finetune $(DEMO_DIR)/pretrain/checkpoint-4.pth --output_dir $(DEMO_DIR)/linprobe_pretrained
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_linprobe.py $(PROBE) --output_dir $(DEMO_DIR)/linprobe_random
	@echo "pretraining checkpoint, TensorBoard logs and reconstruction PNGs: $(DEMO_DIR)/pretrain"
	@echo "Fashion-MNIST test accuracy of a linear probe (10,000 images):"
	@$(PY) tools/probe_report.py pretrained=$(DEMO_DIR)/linprobe_pretrained random=$(DEMO_DIR)/linprobe_random

demo-pretrain: $(DEMO_DIR)/pretrain/checkpoint-4.pth

$(DEMO_DIR)/pretrain/checkpoint-4.pth: | venv fashion-mnist
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_pretrain.py --model mae_vit_tiny_patch16 \
	  --model_kwargs decoder_embed_dim=128 decoder_depth=2 decoder_num_heads=4 \
	  --data_set fashion_mnist --data_path $(FMNIST_DIR) --data_limit 12000 --input_size 64 \
	  --batch_size 64 --epochs 5 --warmup_epochs 1 --blr 1.5e-3 --norm_pix_loss \
	  --num_workers 2 --print_freq 50 --save_freq 5 --vis_freq 1 --output_dir $(DEMO_DIR)/pretrain \
	  --knn_freq 1 --knn_bank_size 2000 --knn_query_size 1000

# UperNet on a Fashion-MNIST segmentation set (ADE20K layout) from an MAE encoder pretrained on that set's own
# training canvases (labels unused) and from random init, for the same iterations
SEG_CONFIG := segmentation/configs/demo_fmnist_upernet_vit_tiny.py
SEG_ITERS := $(shell sed -n 's/^max_iters = //p' $(SEG_CONFIG))
SEG_DATA := $(DEMO_DIR)/seg_data
SEG_PRETRAIN_EPOCHS := 20
SEG_MAE_CKPT := $(DEMO_DIR)/seg_pretrain/checkpoint-$(shell echo $$(($(SEG_PRETRAIN_EPOCHS) - 1))).pth
SEG_RUN = OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) segmentation/train.py $(SEG_CONFIG) --data-root $(SEG_DATA)

$(SEG_DATA)/.made: | seg fashion-mnist
	$(PY) -m segmentation.demo_data --fmnist $(FMNIST_DIR) --out $(SEG_DATA) --train 2000 --val 300
	touch $@

# MAE ViT-Tiny at the fine-tuning's 128 px on the 2,000 training canvases, read as a flat folder of images
demo-seg-pretrain: $(SEG_MAE_CKPT)

$(SEG_MAE_CKPT): | $(SEG_DATA)/.made
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) main_pretrain.py --model mae_vit_tiny_patch16 \
	  --model_kwargs decoder_embed_dim=128 decoder_depth=2 decoder_num_heads=4 \
	  --data_set imagefolder --data_path $(SEG_DATA)/images/training --input_size 128 \
	  --batch_size 64 --epochs $(SEG_PRETRAIN_EPOCHS) --warmup_epochs 2 --blr 1.5e-3 --norm_pix_loss \
	  --num_workers 1 --print_freq 31 --save_freq $(SEG_PRETRAIN_EPOCHS) --vis_freq 5 \
	  --output_dir $(DEMO_DIR)/seg_pretrain

seg-demo: seg $(SEG_DATA)/.made demo-seg-pretrain
	$(SEG_RUN) --work-dir $(DEMO_DIR)/seg_pretrained --pretrained $(SEG_MAE_CKPT)
	$(SEG_RUN) --work-dir $(DEMO_DIR)/seg_random
	for run in pretrained random; do OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) segmentation/test.py $(SEG_CONFIG) \
	  $(DEMO_DIR)/seg_$$run/iter_$(SEG_ITERS).pth --data-root $(SEG_DATA) --work-dir $(DEMO_DIR)/seg_$$run \
	  --out-json $(DEMO_DIR)/seg_$$run/metrics.json || exit 1; done
	@echo "Fashion-MNIST segmentation (300 validation canvases, 11 classes):"
	@$(PY) -m segmentation.demo_report pretrained=$(DEMO_DIR)/seg_pretrained/metrics.json \
	  random=$(DEMO_DIR)/seg_random/metrics.json

# GFL on a Fashion-MNIST detection set (COCO layout) from the demo's MAE encoder and from random init
DET_CONFIG := detection/configs/demo_fmnist_gfl_vit_tiny.py
DET_ITERS := $(shell sed -n 's/^max_iters = //p' $(DET_CONFIG))
DET_RUN = OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) detection/train.py $(DET_CONFIG) --data-root $(DEMO_DIR)/det_data

det-demo: seg demo-pretrain
	$(PY) -m detection.demo_data --fmnist $(FMNIST_DIR) --out $(DEMO_DIR)/det_data --train 2000 --val 300
	$(DET_RUN) --work-dir $(DEMO_DIR)/det_pretrained --pretrained $(DEMO_DIR)/pretrain/checkpoint-4.pth
	$(DET_RUN) --work-dir $(DEMO_DIR)/det_random
	for run in pretrained random; do OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) detection/test.py $(DET_CONFIG) \
	  $(DEMO_DIR)/det_$$run/iter_$(DET_ITERS).pth --data-root $(DEMO_DIR)/det_data --work-dir $(DEMO_DIR)/det_$$run \
	  --out-json $(DEMO_DIR)/det_$$run/metrics.json || exit 1; done
	@echo "Fashion-MNIST detection (300 validation canvases, 10 classes; COCO box AP in %):"
	@$(PY) -m detection.demo_report pretrained=$(DEMO_DIR)/det_pretrained/metrics.json \
	  random=$(DEMO_DIR)/det_random/metrics.json

test: venv fashion-mnist
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
