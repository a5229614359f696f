"""The benchmark script runs end to end (on the CPU, tiny); it measures, the tests never time."""
from benchmarks.pretrain_throughput import measure
import torch


def test_throughput_benchmark_runs_on_cpu():
    result = measure("mae_vit_tiny_patch16", batch_size=2, steps=1, warmup=1, device=torch.device("cpu"),
                     amp="fp32", compile_model=False, input_size=32,
                     model_kwargs=dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                                       decoder_depth=1, decoder_num_heads=2))
    assert result["img_per_s"] > 0 and set(result) == {"img_per_s", "peak_mem_gib"}


def test_throughput_benchmark_runs_dmjd_on_cpu():
    """The two-view DMJD ConViT with its on-device HOG target goes through the same benchmark."""
    result = measure("dmjd_convvit_base_patch16_hog", batch_size=2, steps=1, warmup=1, device=torch.device("cpu"),
                     amp="fp32", compile_model=False, input_size=64,
                     model_kwargs=dict(embed_dims=(16, 24, 32), depths=(1, 1, 1), num_heads=2, decoder_embed_dim=16,
                                       decoder_depth=1, decoder_num_heads=2))
    assert result["img_per_s"] > 0


def test_synthetic_clip_teacher_feeds_the_deepmim_benchmark(tmp_path):
    """--synthetic_clip writes a ViT-B/16-shaped CLIP state dict that the DeepMIM recipe reads."""
    from benchmarks.pretrain_throughput import synthetic_clip_file
    from models.clip_teacher import load_clip_teacher
    teacher = load_clip_teacher(synthetic_clip_file(str(tmp_path), 32))
    assert (teacher.width, teacher.layers, teacher.patch_size, teacher.output_dim) == (768, 12, 16, 512)
    result = measure("deepmim_vit_base_patch16_clip", batch_size=2, steps=1, warmup=1, device=torch.device("cpu"),
                     amp="fp32", compile_model=False, input_size=32,
                     model_kwargs=dict(clip_path=str(tmp_path / "clip_vit_b16_random.pt"), embed_dim=32, depth=4,
                                       num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))
    assert result["img_per_s"] > 0
