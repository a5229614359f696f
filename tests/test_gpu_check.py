"""benchmarks/gpu_check.py: the one prepared GPU run works before a GPU sees it. --smoke runs every part at toy size
on the CPU; a part that fails, times out or lacks a package records why and the others' results are kept, the
report rewritten after every part."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from base.errors import UsageError
from benchmarks import gpu_check
from benchmarks.gpu_check_report import markdown, part_status
from tests.official_standins import write_checkout


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_report(folder: Path) -> dict:
    return json.loads((folder / "gpu_check.json").read_text(), parse_constant=_refuse_constant)


@pytest.mark.slow
def test_smoke_runs_every_part(tmp_path):
    """Every part runs (segmentation only where mmseg imports, the official rows against a stand-in MAE clone,
    the other clones absent): each part and row says ok or why not, in strict JSON and one Markdown table."""
    official_root = tmp_path / "official"
    write_checkout("mae", official_root / "mae")
    report = gpu_check.main(["--smoke", "--output_dir", str(tmp_path / "out"), "--official_root", str(official_root)])
    assert read_report(tmp_path / "out") == json.loads(json.dumps(report))
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    assert report["device"] == "cpu (--smoke)" and report["smoke"] and report["elapsed_s"] <= report["budget_s"]
    for name, part in parts.items():
        if name == "segmentation" and "not importable" in part["status"]:
            continue
        assert part["status"].startswith("ok"), (name, part)
    throughput = {row["name"]: row for row in parts["throughput"]["rows"]}
    assert len(throughput) == 6 and all(row["dtype"] == "bf16" and row["img_per_s"] > 0 for row in throughput.values())
    assert throughput["dmjd_convvit_base_patch16_hog bf16 eager, grad_ckpt stage1"]["grad_ckpt"] == "stage1"
    (compiled,) = parts["compile"]["rows"]
    assert compiled["compile"] is True and compiled["img_per_s"] > 0
    dali = {row["name"]: row["status"] for row in parts["dali_test"]["rows"]}
    if dali:  # DALI imports: the CPU case passed, the GPU case was skipped for want of a GPU
        assert dali == {"test_batches_match_the_pil_path[cpu]": "ok",
                        "test_batches_match_the_pil_path[cuda]": "skipped: the mixed (GPU) decoder needs a GPU"}
    assert all(row["img_per_s"] > 0 for row in parts["dataload"]["rows"] if row["status"] == "ok")
    (clip,) = parts["clip_bf16"]["rows"]
    assert clip["teacher_dtype"] == "float32" and clip["relative_difference"] == 0.0  # the same computation on a CPU
    (fsdp,) = parts["fsdp"]["rows"]
    assert fsdp["all_parameters_dtensor"] and fsdp["weights_changed"] and fsdp["backend"] == "gloo"
    official = {row["name"]: row["status"] for row in parts["official"]["rows"]}
    assert official["mae_vit_base_patch16"] == "ok"
    assert official["dmjd_convvit_base_patch16_hog"] == f"skipped: no {official_root / 'DMJD'}"
    table = (tmp_path / "out" / "gpu_check.md").read_text().splitlines()
    assert table[4] == "| part | what | status | result | s |"
    assert len(table) == 6 + sum(len(part["rows"]) or 1 for part in parts.values())


def fake_check(tmp_path: Path, budget: float = 60.0) -> gpu_check.Check:
    args = gpu_check.build_parser().parse_args(["--smoke", "--output_dir", str(tmp_path)])
    return gpu_check.Check(args, "cpu", tmp_path, gpu_check.time.monotonic() + budget)


def test_a_failing_part_keeps_the_others_and_the_report_is_written_after_each(tmp_path, monkeypatch):
    """A part raising anything is recorded as failed with its error; the report on disk already holds every
    earlier part's results when the next one starts."""
    seen_on_disk = []

    def first(check):
        return {"rows": [{"name": "a", "status": "ok", "img_per_s": 1.0, "step_ms": 2.0}]}

    def broken(check):
        seen_on_disk.append(read_report(tmp_path)["parts"])
        raise ZeroDivisionError("a bug in a part")

    def last(check):
        seen_on_disk.append(read_report(tmp_path)["parts"])
        return {"rows": [{"name": "c", "status": "skipped: nothing here"}]}

    monkeypatch.setattr(gpu_check, "PARTS", {"throughput": first, "dali_test": broken, "dataload": last})
    report = gpu_check.main(["--smoke", "--output_dir", str(tmp_path), "--parts", "throughput", "dali_test",
                             "dataload"])
    assert list(seen_on_disk[0]) == ["throughput"] and list(seen_on_disk[1]) == ["throughput", "dali_test"]
    parts = report["parts"]
    assert parts["throughput"]["status"] == "ok"
    assert parts["dali_test"]["status"] == "failed"
    assert parts["dali_test"]["error"] == "ZeroDivisionError: a bug in a part"
    assert parts["dataload"]["status"] == "skipped: nothing here"
    assert "| dali_test |  | failed | ZeroDivisionError: a bug in a part |" in markdown(report)


def test_a_process_past_its_time_box_is_a_timeout_and_a_spent_budget_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_SECONDS", 0.5)
    check = fake_check(tmp_path)
    with pytest.raises(TimeoutError, match="timed out after 1 s"):
        check.run(["-c", "import time; time.sleep(30)"], box=0.4)  # x3 under --smoke
    spent = fake_check(tmp_path, budget=0.1)
    row = gpu_check.measured("x", lambda: gpu_check.last_json(spent.run(["-c", "print('{}')"], box=60)))
    assert row == {"name": "x", "status": "skipped: out of time: the run's --budget_s is spent"}


def test_a_missing_package_is_a_skip_and_other_errors_a_failure():
    missing = subprocess.CompletedProcess([], 1, "", "Traceback ...\nModuleNotFoundError: No module named 'einops'\n")
    row = gpu_check.measured("UM-MAE", lambda: gpu_check.last_json(missing))
    assert row["status"] == "skipped: einops is not installed (ModuleNotFoundError: No module named 'einops')"
    usage = subprocess.CompletedProcess([], 2, "", "error: --compare-official /x is not a folder\n")
    row = gpu_check.measured("MAE", lambda: gpu_check.last_json(usage))
    assert row == {"name": "MAE", "status": "failed",
                   "error": "exit status 2: error: --compare-official /x is not a folder"}
    printed = subprocess.CompletedProcess([], 0, "a table\n{\"rows\": []}\n", "")
    assert gpu_check.last_json(printed) == {"rows": []}


@pytest.mark.parametrize("statuses, expected", [
    (["ok", "ok"], "ok"), (["ok", "skipped: no DALI"], "ok, some skipped"), (["ok", "failed"], "partly failed"),
    (["failed", "skipped: x"], "failed"), (["skipped: x", "skipped: x"], "skipped: x"),
    (["skipped: x", "skipped: y"], "skipped"), ([], "skipped: nothing to run")])
def test_part_status(statuses, expected):
    assert part_status([{"status": s} for s in statuses]) == expected


def test_segmentation_without_mmseg_is_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    (row,) = gpu_check.part_segmentation(fake_check(tmp_path))["rows"]
    assert row["status"] == ("skipped: mmseg, mmengine, mmcv not importable (the segmentation extra, "
                             "requirements-seg.txt)")


def test_official_without_a_root_is_a_skip(tmp_path):
    with pytest.raises(gpu_check.Skipped, match="no --official_root given"):
        gpu_check.part_official(fake_check(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_the_full_run_needs_a_gpu(tmp_path):
    with pytest.raises(UsageError, match="this machine has none: pass --smoke"):
        gpu_check.main(["--output_dir", str(tmp_path)])


def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file: pass a folder"):
        gpu_check.main(["--smoke", "--output_dir", str(tmp_path / "f"), "--parts", "official"])

