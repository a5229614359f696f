"""Peak dense tensor-core throughput of the GPUs the benchmarks are run on, for model FLOPs utilization (MFU).

Figures are NVIDIA's data-sheet numbers without structured sparsity, in TFLOP/s. "fp32" is the TF32 tensor-core
peak where the GPU has one: the benchmark enables TF32 matmuls, so an fp32 step runs its matmuls there (V100 has
no TF32 and no bf16: its fp32 figure is the CUDA-core one, and bf16 is unknown).
"""
import re

# (pattern on torch.cuda.get_device_name(), GPU, {precision: peak TFLOP/s}); the first match wins
PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"H200(?!.*NVL)", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "fp32": 378.0}),
    (r"H100(?!.*(PCIe|NVL))", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    (r"A100", "A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    (r"V100-SXM", "V100 SXM2", {"fp16": 125.0, "fp32": 15.7}),
    (r"V100-PCIE", "V100 PCIe", {"fp16": 112.0, "fp32": 14.0}),
    (r"L40S", "L40S", {"bf16": 362.05, "fp16": 362.05, "fp32": 183.0}),
)


def peak_tflops(device_name: str, precision: str) -> tuple[float | None, str]:
    """(peak dense TFLOP/s of ``device_name`` at ``precision`` (bf16, fp16, fp32), where it comes from); the peak
    is None when unknown, and the second item then says why."""
    for pattern, gpu, peaks in PEAKS:
        if re.search(pattern, device_name):
            if precision in peaks:
                return peaks[precision], f"{gpu} data sheet, dense {precision}"
            return None, f"the {gpu} has no {precision} tensor cores; pass --peak_tflops"
    return None, f"no peak TFLOP/s known for {device_name!r}; pass --peak_tflops"
