"""The leaf layer: errors, image reading and constants, safe checkpoint loading. It imports nothing of the
project; ``models`` depends only on it, torch and timm (the layers: ``.importlinter``)."""
