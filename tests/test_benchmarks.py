"""The benchmark scripts run end to end (on the CPU, tiny); they measure, the tests never time."""
import json

import torch

from benchmarks import cpu_proxies
from benchmarks.pretrain_throughput import measure


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


TINY_DMJD = ["embed_dims=(8,16,32)", "depths=(1,1,1)", "num_heads=2", "decoder_embed_dim=16", "decoder_depth=1",
             "decoder_num_heads=2"]
TINY_SWIN = ["embed_dim=8", "depths=(1,1,1,1)", "num_heads=(1,1,2,2)", "posmlp_dim=4"]


def test_cpu_proxies_json(capsys):
    """--json prints one JSON object: a row per recipe with its views, GFLOPs and saved MiB per image."""
    cpu_proxies.main(["--recipes", "dmjd_convvit_base_patch16_hog", "--input_size", "64", "--model_kwargs",
                      *TINY_DMJD, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert {"rows", "batch_size", "dtype", "torch", "date", "command"} <= set(result)
    (row,) = result["rows"]
    assert row["recipe"] == "dmjd_convvit_base_patch16_hog" and row["views"] == 2
    assert row["gflop"] > 0 and row["saved_mib"] > 0


def test_cpu_proxies_table(capsys):
    """Without --json: a Markdown table, a header, a rule and one line per recipe."""
    cpu_proxies.main(["--recipes", "ummae_swin_tiny_256", "simmim_swin_tiny_256", "--input_size", "128",
                      "--batch_size", "1", "--model_kwargs", *TINY_SWIN])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| recipe | views | GFLOP") and len(lines) == 4
    assert lines[2].startswith("| ummae_swin_tiny_256 | 1 |") and lines[3].startswith("| simmim_swin_tiny_256 | 1 |")
