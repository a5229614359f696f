"""ADE20K semantic segmentation with mmsegmentation (the onedl-* packages): our encoders as mmseg backbones,
a layer-decay optimizer constructor that asks the encoder for its layer groups, weights_only-safe checkpoint
loading inside mmengine, and the demo's dataset. Importing this package registers them (configs name it in
``custom_imports``)."""
from . import backbones, datasets, layer_decay, safe_load  # noqa: F401  (registrations and the loading guard)

safe_load.install()
