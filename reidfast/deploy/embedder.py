"""`Embedder`: images in, embeddings out, over one runtime (eager PyTorch, torch.compile, an
AOTInductor package, ONNX Runtime, a TensorRT engine), with the model's own test preprocessing.

Every runtime gets the same input: the images resized to the contract's size (bilinear,
antialiased, as reidfast's test transform does), normalised ((pixel / 255 - mean) / std), as a
float32 batch [B, 3, H, W]; so an embedding does not depend on the runtime beyond its arithmetic.
Images may be file paths, uint8 arrays [H, W, 3] (RGB) or uint8 tensors [3, H, W] / [N, 3, H, W].
They are embedded `batch_size` at a time; a runtime with a batch range (a TensorRT profile, a
fixed-batch ONNX graph) refuses, before any work, a batch outside it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from reidfast._checks import check_int
from reidfast.data.loader import read_image
from reidfast.data.transforms import BatchTransform, SampleTransform
from reidfast.export.onnx import INPUT_NAME, Preprocessing, read_preprocessing

RUNTIMES = ("eager", "compile", "aoti", "onnxruntime", "tensorrt")


class Embedder:
    """Embeds images with one runtime (module docstring).

    Build it with `from_model` (eager or torch.compile), `from_checkpoint`, `from_aoti`,
    `from_onnx` or `from_tensorrt`; call it with images to get Tensor[N, D] float32 on the CPU.

    Args:
        run: the runtime, Tensor[B, 3, H, W] float32 on `device` -> Tensor[B, D].
        preprocessing: the model's input contract.
        runtime: its name (one of RUNTIMES), for messages.
        device: where the batches are made and run.
        batch_size: images per call of `run`.
        batch_range: (min, max) batch sizes `run` accepts (max None: any).
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], preprocessing: Preprocessing, runtime: str,
                 device: torch.device | str = "cpu", batch_size: int = 32, batch_range: tuple[int, int | None] = (1, None)):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        check_int("batch_size", batch_size, minimum=1)
        low, high = batch_range
        if batch_size < low or (high is not None and batch_size > high):
            raise ValueError(f"batch_size={batch_size} lies outside the {runtime} runtime's batch range "
                             f"[{low}, {high if high is not None else 'any'}]")
        self.run, self.preprocessing, self.runtime = run, preprocessing, runtime
        self.device, self.batch_size, self.batch_range = torch.device(device), batch_size, (low, high)
        size = (preprocessing.height, preprocessing.width)
        self._resize = SampleTransform(*size, *size)
        self._normalize = BatchTransform(preprocessing.mean, preprocessing.std, device=self.device)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, preprocessing: Preprocessing, compile: bool = False,
                   device: torch.device | str = "cpu", batch_size: int = 32) -> "Embedder":
        """Eager PyTorch (or torch.compile with a dynamic batch) of `model`'s eval-mode forward,
        L2-normalised when `preprocessing.l2_normalized`. The model is put in eval mode on `device`.
        Compiled, the first call compiles (a batch of 1 gets a graph of its own, any other batch
        shares one); for a one-time compilation ahead of serving, export an AOTInductor package."""
        model = model.to(device).eval()
        forward = torch.compile(model, dynamic=True) if compile else model

        @torch.no_grad()
        def run(images):
            embeddings = forward(images)
            return nn.functional.normalize(embeddings, dim=1) if preprocessing.l2_normalized else embeddings

        return cls(run, preprocessing, "compile" if compile else "eager", device, batch_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, compile: bool = False, device: torch.device | str = "cpu",
                        batch_size: int = 32, normalize: bool = False) -> "Embedder":
        """A training checkpoint's model with its run's input size and normalisation."""
        from reidfast.data.transforms import recipe_for
        from reidfast.training import model_from_checkpoint

        model, config = model_from_checkpoint(path)
        recipe = recipe_for(config.method, **config.data.transforms)
        preprocessing = Preprocessing(recipe.height, recipe.width, tuple(recipe.mean), tuple(recipe.std),
                                      l2_normalized=normalize)
        return cls.from_model(model, preprocessing, compile, device, batch_size)

    @classmethod
    def from_aoti(cls, path: str | os.PathLike, batch_size: int = 32, device: torch.device | str = "cpu",
                  max_batch: int | None = None) -> "Embedder":
        """An AOTInductor package exported by reidfast.export.export_aoti (compiled for `device`;
        `max_batch`: the largest batch it was compiled for, if known, checked against batch_size)."""
        from reidfast.export.aoti import load_aoti

        runner, preprocessing = load_aoti(path)

        @torch.no_grad()
        def run(images):  # the package's kernels assume the contiguous layout it was compiled for
            return runner(images.contiguous())

        return cls(run, preprocessing, "aoti", device, batch_size, (1, max_batch))

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, batch_size: int = 32, providers: Sequence[str] | None = None,
                  threads: int | None = None) -> "Embedder":
        """An ONNX file exported by reidfast.export (its contract read from the metadata) in ONNX
        Runtime (`providers`: default the CPU's; `threads`: its intra-op threads, None for ONNX
        Runtime's default); a fixed-batch graph runs that batch only."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            check_int("threads", threads, minimum=1)
            options.intra_op_num_threads = threads
        preprocessing = read_preprocessing(path)
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=list(providers or ["CPUExecutionProvider"]))
        graph_input = session.get_inputs()[0]
        half = graph_input.type == "tensor(float16)"
        batch = graph_input.shape[0]
        batch_range = (batch, batch) if isinstance(batch, int) else (1, None)

        def run(images):
            feed = images.to(torch.float16) if half else images
            (embeddings,) = session.run(None, {INPUT_NAME: feed.numpy()})
            return torch.from_numpy(embeddings).float()

        return cls(run, preprocessing, "onnxruntime", "cpu", batch_size, batch_range)

    @classmethod
    def from_tensorrt(cls, engine_path: str | os.PathLike, batch_size: int = 32, device: str = "cuda") -> "Embedder":
        """A TensorRT engine built by reidfast.export.build_tensorrt_engine (its contract in
        `engine_path`.json), run with torch tensors as its buffers (`set_tensor_address`,
        `execute_async_v3` on the current stream); its profile is the batch range. Written to
        the documented TensorRT 10/11 API; not run where reidfast is tested (no TensorRT)."""
        try:
            import tensorrt as trt
        except ImportError as error:
            raise ImportError("Embedder.from_tensorrt needs TensorRT 10 or 11 (the tensorrt Python package), which is "
                              "not installed") from error
        engine_path = pathlib.Path(engine_path)
        preprocessing = Preprocessing.from_json(engine_path.with_name(engine_path.name + ".json").read_text())
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT {trt.__version__} could not deserialize {str(engine_path)!r} (built by another "
                               "TensorRT version or for another GPU?)")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        (output_name,) = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        low, _, high = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        input_dtype = torch.float16 if engine.get_tensor_dtype(INPUT_NAME) == trt.DataType.HALF else torch.float32
        output_dtype = torch.float16 if engine.get_tensor_dtype(output_name) == trt.DataType.HALF else torch.float32

        def run(images):
            images = images.to(input_dtype).contiguous()
            context.set_input_shape(INPUT_NAME, tuple(images.shape))
            context.set_tensor_address(INPUT_NAME, images.data_ptr())
            output = torch.empty(tuple(context.get_tensor_shape(output_name)), dtype=output_dtype, device=images.device)
            context.set_tensor_address(output_name, output.data_ptr())
            if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {str(engine_path)!r} on a batch of {images.shape[0]}")
            return output.float()

        return cls(run, preprocessing, "tensorrt", device, batch_size, (low[0], high[0]))

    # -- use --------------------------------------------------------------------------------------
    def __call__(self, images) -> torch.Tensor:
        """Tensor[N, D] float32 (CPU) of `images` (module docstring), in their order."""
        images = self._as_list(images)
        low, high = self.batch_range
        last = len(images) % self.batch_size or self.batch_size
        if images and last < low:
            raise ValueError(f"{len(images)} images leave a last batch of {last}, below the {self.runtime} runtime's "
                             f"smallest batch {low}: pass a multiple of batch_size={self.batch_size}")
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self._resize(self._read(item, start + i))
                                 for i, item in enumerate(images[start:start + self.batch_size])])
            chunks.append(self.run(self._normalize(batch.to(self.device))).float().cpu())
        if not chunks:
            raise ValueError("images is empty")
        return torch.cat(chunks)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(runtime={self.runtime!r}, device={self.device}, batch_size={self.batch_size}, "
                f"preprocessing={self.preprocessing})")

    @staticmethod
    def _as_list(images) -> list:
        if isinstance(images, (str, os.PathLike)):
            return [images]
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                return [images]
            if images.dim() == 4:
                return list(images.unbind(0))
            raise ValueError(f"images as a tensor must be [3, H, W] or [N, 3, H, W], got shape {tuple(images.shape)}")
        if isinstance(images, np.ndarray):
            return [images] if images.ndim == 3 else list(images)
        if isinstance(images, Sequence):
            return list(images)
        raise TypeError(f"images must be paths, uint8 arrays or uint8 tensors, got {type(images).__name__}")

    @staticmethod
    def _read(item, index: int) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            return read_image(str(item))
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                raise ValueError(f"images[{index}]: an array must be uint8 [H, W, 3] RGB, got {item.dtype} "
                                 f"{tuple(item.shape)}")
            return torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1)
        if isinstance(item, torch.Tensor):
            if item.dtype != torch.uint8 or item.dim() != 3 or item.shape[0] != 3:
                raise ValueError(f"images[{index}]: a tensor must be uint8 [3, H, W] RGB, got {item.dtype} "
                                 f"{tuple(item.shape)}")
            return item.cpu()
        raise TypeError(f"images[{index}] must be a path, a uint8 array or a uint8 tensor, got {type(item).__name__}")
