"""SAE encode + per-latent statistics: the torch reference on CPU, the fused kernel on a GPU.

GPU benchmarks raise NotImplementedError in ``setup`` without CUDA, which asv reports as skipped.
The one-shot GPU check with correctness and the comparison table is ``benchmarks/gpu_check.py``.
"""

import torch

from pyfloor.encode import StatsAccumulator
from pyfloor.sae import SAE

MODES = [("relu", None), ("topk", 64)]


def _sae_and_x(n, d, m, dtype, device):
    g = torch.Generator().manual_seed(0)
    sae = SAE(d, m)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, m, generator=g) / d**0.5)
        sae.b_enc.copy_(torch.randn(m, generator=g) * 0.1 - 2.0)  # about 2 % of ReLUs fire
    x = torch.randn(n, d, generator=g)
    return sae.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)


class ReferenceEncodeCPU:
    """The torch reference (chunked, float32) on CPU at a modest shape."""

    params = [MODES]
    param_names = ["mode, k"]
    timeout = 120

    def setup(self, mode_k):
        self.sae, self.x = _sae_and_x(2048, 256, 4096, torch.float32, "cpu")

    def time_stats(self, mode_k):
        mode, k = mode_k
        StatsAccumulator(self.sae, activation=mode, k=k, backend="torch").batch(self.x)


class _GPU:
    """Shared set-up of the GPU benchmarks: bf16 inputs at the paper's shape (d=1024, m=32768)."""

    params = [MODES, [(65536, 1024, 32768)]]
    param_names = ["mode, k", "N, d, m"]
    timeout = 300

    def setup(self, mode_k, shape):
        if not torch.cuda.is_available():
            raise NotImplementedError("needs a CUDA GPU")
        self.sae, self.x = _sae_and_x(*shape, torch.bfloat16, "cuda")
        self.run()  # compile and warm up
        torch.cuda.synchronize()

    def time_encode(self, mode_k, shape):
        self.run()
        torch.cuda.synchronize()


class FusedEncodeGPU(_GPU):
    """The fused Triton kernel, statistics only (what ``pyfloor measure`` runs)."""

    def setup(self, mode_k, shape):
        from pyfloor.kernels import fused_batch_stats

        mode, k = mode_k
        self.run = lambda: fused_batch_stats(self.x, self.sae, mode, k)
        super().setup(mode_k, shape)

    def track_peak_extra_gpu_mb(self, mode_k, shape):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self.run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    track_peak_extra_gpu_mb.unit = "MB"


class ReferenceEncodeGPU(_GPU):
    """pyfloor's torch reference on the GPU (float32 matmul, stable sort for top-k)."""

    def setup(self, mode_k, shape):
        mode, k = mode_k
        self.run = lambda: StatsAccumulator(self.sae, activation=mode, k=k, backend="torch").batch(self.x)
        super().setup(mode_k, shape)


class MatmulGPU(_GPU):
    """The bare bf16 encoder matmul (cuBLAS), writing the dense tokens × latents matrix."""

    params = [[(65536, 1024, 32768)]]
    param_names = ["N, d, m"]

    def setup(self, shape):
        self.run = lambda: torch.matmul(self.x, self.sae.W_enc)
        super().setup(None, shape)

    def time_encode(self, shape):
        super().time_encode(None, shape)
