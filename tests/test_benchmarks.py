"""The benchmark script runs end to end (on the CPU, tiny); it measures, the tests never time."""
from benchmarks.pretrain_throughput import measure
import torch


def test_throughput_benchmark_runs_on_cpu():
    result = measure("mae_vit_tiny_patch16", batch_size=2, steps=1, warmup=1, device=torch.device("cpu"),
                     amp="fp32", compile_model=False, input_size=32,
                     model_kwargs=dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                                       decoder_depth=1, decoder_num_heads=2))
    assert result["img_per_s"] > 0 and set(result) == {"img_per_s", "peak_mem_gib"}
