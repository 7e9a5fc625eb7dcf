"""The torch fast backend: bf16/fp16 weights, static shapes, CUDA graphs (gpt-fast style).

Same surface as the torch reference backend (numpy in, numpy out; its step model batches N tokens
for parallel action blocks), plus `chunk` (VQ encode of every view -> token splice -> prefill ->
action head as ONE graph). Every shape is static: prompts are right-padded to a length bucket with an
explicit key mask (causal attention never lets a real token see the padding; the bidirectional action
head masks it via `valid`), decoding writes into one preallocated KV cache per capacity bucket, and
each (stage, shape) is captured once as a `torch.cuda.CUDAGraph` and replayed after copying inputs
into its fixed buffers.

All graphs share one memory pool: they never run concurrently and every output is copied out right
after its replay, so one graph's scratch may reuse another's.

The VQ quantizer (quant_conv + distances + argmin) always runs in fp32: lower precision flips
near-tie codes. On device="cpu" the same code runs eagerly (no graphs), which is what the tests cover.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rynn_edge.runtime.backends.shapes import LENGTH_BUCKET, round_up
from rynn_edge.runtime.errors import UserError
from rynn_edge.runtime.model.action_head import ActionHead
from rynn_edge.runtime.model.backbone import ChameleonBackbone, KVCache
from rynn_edge.runtime.model.checkpoint import load_model
from rynn_edge.runtime.model.config import ModelConfig
from rynn_edge.runtime.model.vqgan import VQGAN

CAPACITY_BUCKET = 256  # decode caches likewise
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def require_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--backend cuda needs an NVIDIA GPU with a CUDA build of torch, and none is usable here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use --backend torch "
            "(CPU reference) or onnxruntime, or install a CUDA torch wheel on a GPU machine."
        )
    return device


class Graphed:
    """One static-shape call. Inputs are copied into fixed buffers; on CUDA the call is captured once as a
    CUDA graph (after warm-up on a side stream) and replayed; on CPU it runs eagerly on the buffers."""

    def __init__(
        self,
        fn: Callable[..., Tensor | tuple[Tensor, ...]],
        inputs: Sequence[Tensor],
        pool: object | None = None,
    ):
        self.fn, self.inputs = fn, list(inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.inputs[0].device.type == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # cuBLAS/cuDNN handles and autotuning happen outside the capture
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.output = fn(*self.inputs)

    def __call__(self, *values: Tensor | np.ndarray) -> Tensor:
        for buffer, value in zip(self.inputs, values, strict=True):
            buffer.copy_(torch.as_tensor(value), non_blocking=False)
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.output


class CudaDecoder:
    """Preallocated KV cache of one capacity bucket + one graph per tokens-per-step count.

    Slot `capacity` is scratch: graph warm-up writes there (and is then zeroed), so capturing a new
    tokens-per-step count never touches a cache that holds a prompt.
    """

    def __init__(self, backend: CudaBackend, capacity: int):
        self.backend, self.capacity = backend, capacity
        cfg = backend.config
        self.cache = KVCache.allocate(cfg, 1, capacity + 1, backend.dtype, backend.device)
        self.graphs: dict[int, Graphed] = {}
        self.length = 0

    def _graph(self, n: int) -> Graphed:
        if n not in self.graphs:
            dev = self.backend.device
            slots = torch.full((n,), self.capacity, dtype=torch.long, device=dev)
            mask = torch.zeros(n, self.capacity + 1, dtype=torch.bool, device=dev)
            mask[:, self.capacity] = True
            ids = torch.zeros(1, n, dtype=torch.long, device=dev)

            def fn(ids: Tensor, positions: Tensor, slots: Tensor, mask: Tensor) -> Tensor:
                return self.backend.backbone.decode_tokens(ids, positions, self.cache, slots, mask)

            self.graphs[n] = Graphed(fn, [ids, ids.clone(), slots, mask], self.backend.pool)
            self.cache.k[:, :, :, self.capacity].zero_()
            self.cache.v[:, :, :, self.capacity].zero_()
        return self.graphs[n]

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Prompt k/v into slots 0..L-1 (prefill padded to a length bucket); fp32 logits of its last token."""
        n = len(prompt_ids)
        ids, positions, valid = self.backend.padded(prompt_ids)
        hidden, k, v = self.backend.backbone.prefill_with_kv(ids, positions, valid)
        self.cache.k[:, :, :, :n] = k[:, :, :, :n]
        self.cache.v[:, :, :, :n] = v[:, :, :, :n]
        self.length = n
        return self.backend.backbone.logits(hidden[:, n - 1]).squeeze(0).cpu().numpy()

    def run(self, tokens: Sequence[int], positions: Sequence[int], key_mask: np.ndarray) -> np.ndarray:
        n = len(tokens)
        mask = np.zeros((n, self.capacity + 1), dtype=bool)
        mask[:, : key_mask.shape[-1]] = key_mask
        where = np.asarray(positions, dtype=np.int64)
        ids = np.asarray(tokens, dtype=np.int64)[None]
        logits = self._graph(n)(ids, where[None], where, mask)
        return logits.float().cpu().numpy()


class CudaStepModel:
    """`decoding.BatchStepModel` over the backend's preallocated caches (batch 1, N tokens per step)."""

    def __init__(self, backend: CudaBackend):
        self.backend = backend
        self.decoder: CudaDecoder | None = None

    @torch.inference_mode()
    def begin(self, prompt_ids: Sequence[int], capacity: int) -> np.ndarray:
        self.decoder = self.backend.decoder(capacity)
        return self.decoder.prefill(prompt_ids)

    @torch.inference_mode()
    def step(self, token: int, position: int, key_mask: np.ndarray) -> np.ndarray:
        return self.step_many([token], [position], key_mask[None])[0]

    @torch.inference_mode()
    def step_many(self, tokens: Sequence[int], positions: Sequence[int], key_mask: np.ndarray) -> np.ndarray:
        if self.decoder is None:
            raise RuntimeError("step() before begin()")
        return self.decoder.run(tokens, positions, key_mask)


class CudaBackend:
    name = "cuda"

    def __init__(
        self,
        config: ModelConfig,
        backbone: ChameleonBackbone,
        head: ActionHead,
        vqgan: VQGAN,
        *,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        vq_dtype: torch.dtype = torch.float32,
    ):
        self.device = require_device(device)
        self.config, self.dtype = config, dtype
        self.time_horizon, self.action_dim = config.time_horizon, config.action_dim
        self.max_positions = config.max_position_embeddings
        self.backbone = backbone.to(self.device, dtype).eval()
        self.head = head.to(self.device, dtype).eval()
        self.vqgan = vqgan.to(self.device).float().eval()
        self.vq_encoder = self._cast(self.vqgan.encoder, vq_dtype)
        self.vq_decoder = self._cast(self.vqgan.decoder, vq_dtype)
        self.vq_dtype = vq_dtype
        self.pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        self._graphs: dict[tuple, Graphed] = {}
        self._decoders: dict[int, CudaDecoder] = {}

    @classmethod
    def open(
        cls,
        model_dir: str | Path,
        vq_dir: str | Path,
        *,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        trust_pickle: bool = False,
    ) -> CudaBackend:
        device = require_device(device)
        config, backbone, head = load_model(model_dir, dtype=dtype, device=device)
        return cls(
            config,
            backbone,
            head,
            VQGAN.from_dir(vq_dir, trust_pickle=trust_pickle),
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)

    def _cached(self, key: tuple, make: Callable[[], Graphed]) -> Graphed:
        if key not in self._graphs:
            self._graphs[key] = make()
        return self._graphs[key]

    def padded(self, prompt_ids: Sequence[int], bucket: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """ids, positions [1, Lb] long and key mask [1, Lb] bool for a prompt right-padded to its bucket."""
        n = len(prompt_ids)
        size = bucket or round_up(n, LENGTH_BUCKET)
        ids = torch.zeros(1, size, dtype=torch.long)
        ids[0, :n] = torch.as_tensor(list(prompt_ids))
        valid = torch.arange(size)[None] < n
        positions = torch.arange(size)[None]
        return ids.to(self.device), positions.to(self.device), valid.to(self.device)

    # --- stages ---------------------------------------------------------------------------------------
    def _codes(self, pixels: Tensor) -> Tensor:
        z = self.vq_encoder(pixels.to(self.vq_dtype)).float()
        return self.vqgan.quantize(self.vqgan.quant_conv(z))

    def _actions(self, ids: Tensor, positions: Tensor, valid: Tensor) -> Tensor:
        return self.head(self.backbone.prefill(ids, positions, valid), valid)[0]

    def _pixel_buffer(self, shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def vq_encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [B, 3, S, S] in [-1, 1] -> codes int64 [B, (S/16)^2]; all views in one graph."""
        graph = self._cached(
            ("vq_encode", pixels.shape),
            lambda: Graphed(self._codes, [self._pixel_buffer(pixels.shape)], self.pool),
        )
        return graph(pixels).cpu().numpy()

    @torch.inference_mode()
    def actions(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Prefill (no lm_head) + action head over the padded prompt -> normalized actions float32 [T, A]."""
        ids, positions, valid = self.padded(prompt_ids)
        graph = self._cached(
            ("actions", ids.shape[1]),
            lambda: Graphed(
                lambda i, v: self._actions(i, positions, v), [ids.clone(), valid.clone()], self.pool
            ),
        )
        return graph(ids, valid).float().cpu().numpy()

    @torch.inference_mode()
    def chunk(
        self, pixels: np.ndarray, template_ids: Sequence[int], slots: np.ndarray, code_to_id: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole continuous step as one graph: VQ encode every view, write their token ids (through
        the code -> id table) at `slots` of the prompt (`ImageLayout.code_positions`), prefill, action
        head. Returns (codes int64 [views, h*w], normalized actions float32 [T, A])."""
        ids, positions, valid = self.padded(template_ids)
        key = ("chunk", pixels.shape, ids.shape[1], len(slots))
        table = np.asarray(code_to_id, dtype=np.int64)
        where = np.asarray(slots, dtype=np.int64)

        def fn(
            pix: Tensor, template: Tensor, where: Tensor, table: Tensor, valid: Tensor
        ) -> tuple[Tensor, Tensor]:
            codes = self._codes(pix)
            full = template.clone()
            full[0, where] = table[codes.reshape(-1)]
            return codes, self._actions(full, positions, valid)

        def make() -> Graphed:
            buffers = [
                self._pixel_buffer(pixels.shape),
                ids.clone(),
                torch.as_tensor(where, device=self.device),
            ]
            buffers += [torch.as_tensor(table, device=self.device), valid.clone()]
            return Graphed(fn, buffers, self.pool)

        codes, actions = self._cached(key, make)(pixels, ids, where, table, valid)
        return codes.cpu().numpy(), actions.float().cpu().numpy()

    def decoder(self, capacity: int) -> CudaDecoder:
        size = round_up(capacity, CAPACITY_BUCKET)
        if size not in self._decoders:
            self._decoders[size] = CudaDecoder(self, size)
        return self._decoders[size]

    def step_model(self) -> CudaStepModel:
        return CudaStepModel(self)

    @torch.inference_mode()
    def vq_decode(self, codes: np.ndarray) -> np.ndarray:
        """codes int64 [B, h, w] -> images uint8 [B, 16h, 16w, 3]; all images in one graph."""

        def fn(c: Tensor) -> Tensor:
            latents = self.vqgan.post_quant_conv(self.vqgan.quantize.lookup(c)).to(self.vq_dtype)
            unit = (torch.clamp(self.vq_decoder(latents).float(), -1.0, 1.0) + 1.0) / 2.0
            return (unit.permute(0, 2, 3, 1) * 255).to(torch.uint8)

        graph = self._cached(
            ("vq_decode", codes.shape),
            lambda: Graphed(fn, [torch.zeros(codes.shape, dtype=torch.long, device=self.device)], self.pool),
        )
        return graph(np.asarray(codes, dtype=np.int64)).cpu().numpy()
