"""Step time and peak memory of the trainer against a plain reference loop, same process.

The reference is written plainly in the style of diffusers'
``examples/text_to_image/train_text_to_image_lora.py``: peft LoRA on the UNet via
``unet.add_adapter``, and every step runs the VAE encoder and the text encoder again.
Our trainer computes latents and conditionings once and then runs only the UNet.
Both use the same model, images, captions, batch size, rank and optimizer.

Time: median seconds per optimizer step (after warm-up), both measured in this process.
Memory: peak resident memory of a fresh child process per loop (CPU), or
``torch.cuda.max_memory_allocated`` (GPU); printed as a ratio too.

Usage: python bench/train_step.py [--resolution 128] [--steps 12] [--batch-size 2] [--device cpu]
"""

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRECISIONS = ("no", "fp16", "bf16")
sys.path.insert(0, str(ROOT))


def make_dataset(folder, resolution):
    """Phantom CTs through ``prepare``; plain PNGs where pydicom is missing (e.g. a lent GPU box)."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return write_png_dataset(folder / "ds", resolution)
    from lib_lora_train.config import IngestConfig
    from lib_lora_train.dataset.prepare import prepare_dataset
    from lib_lora_train.dicom.phantom import write_phantom_series
    from lib_lora_train.dicom.pseudonym import Pseudonymizer

    write_phantom_series(folder / "in", n_patients=2, slices_per_patient=4, size=resolution)
    prepare_dataset([folder / "in"], folder / "ds", IngestConfig(ocr="off", resolution=resolution, window="lung"),
                    Pseudonymizer(b"b" * 32), overwrite=True)
    return folder / "ds"


def write_png_dataset(folder, resolution, count=8):
    """A dataset folder of seeded grey gradients with captions, in ``prepare``'s layout."""
    import numpy as np
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["file_name,text"]
    for index in range(count):
        pixels = (np.linspace(0, 255, resolution)[None, :] * rng.uniform(0.3, 1.0)).repeat(resolution, 0)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "images" / f"{index}.png")
        rows.append(f'images/{index}.png,"CT scan of chest, axial slice, lung window, medical_art style"')
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


def load_host(cache, device, dtype="no"):
    from lib_lora_train.hosts.diffusers_host import DiffusersHost

    return DiffusersHost.embedded(cache, device=device, dtype=_dtypes()[dtype])


def run_ours(host, dataset, args):
    """Median step time of lib_lora_train's loop."""
    from lib_lora_train.config import TrainConfig
    from lib_lora_train.trainer.data import load_examples
    from lib_lora_train.trainer.loop import train_lora
    from lib_lora_train.trainer.precision import resolve_precision

    config = TrainConfig(train_data_dir=str(dataset), resolution=args.resolution, lora_rank=args.rank,
                         lora_alpha=float(args.rank), batch_size=args.batch_size, max_steps=args.steps,
                         mixed_precision=args.precision, device=args.device,
                         output_dir=str(dataset.parent / "out" / "bench"))
    stamps = []
    train_lora(host, load_examples(dataset), config, resolve_precision(args.device, args.precision),
               progress=lambda p: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:]))


def run_reference(host, dataset, args):
    """Median step time of a plain diffusers-style loop (encoders every step)."""
    import torch
    from peft import LoraConfig

    from lib_lora_train.trainer.data import load_examples, load_pixels
    from lib_lora_train.trainer.precision import resolve_precision

    examples = load_examples(dataset)
    pixels = torch.stack([load_pixels(e.image_path, args.resolution) for e in examples])
    ids = host.tokenizer([e.caption for e in examples], padding="max_length", truncation=True,
                         max_length=host.tokenizer.model_max_length, return_tensors="pt").input_ids
    unet, vae, text_encoder = host.unet, host.vae, host.text_encoder
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for parameter in params:  # as the script's cast_training_params: LoRA in fp32 over a half base
        parameter.data = parameter.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    precision = resolve_precision(args.device, args.precision)
    scaler = precision.grad_scaler()
    alphas = host.alphas_cumprod.to(torch.float32)
    generator = torch.Generator().manual_seed(0)
    stamps = []
    unet.train()
    try:
        for step in range(args.steps):
            batch = torch.randint(0, len(examples), (args.batch_size,), generator=generator)
            latents = vae.encode(pixels[batch].to(host.device, host.dtype)).latent_dist.sample() * vae.config.scaling_factor
            latents = latents.float()
            hidden = text_encoder(ids[batch].to(host.device), return_dict=False)[0]
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, len(alphas), (args.batch_size,), device=latents.device)
            a = alphas.to(latents.device)[timesteps].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            with precision.autocast():
                prediction = unet(noisy.to(host.dtype), timesteps, hidden, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(prediction.float(), noise.float(), reduction="mean")
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
    finally:
        unet.eval()
    return statistics.median(b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:]))


def child_peak_memory(which, args, dataset, cache):
    """Run one loop in a fresh process and return its peak memory increase in MiB."""
    command = [sys.executable, __file__, "--child", which, "--dataset", str(dataset), "--cache", str(cache),
               "--resolution", str(args.resolution), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--rank", str(args.rank), "--device", args.device, "--warmup", str(args.warmup),
               "--precision", args.precision]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def child(args):
    import torch

    host = load_host(pathlib.Path(args.cache), args.device, args.precision)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        (run_ours if args.child == "ours" else run_reference)(host, pathlib.Path(args.dataset), args)
        print(json.dumps({"peak_mib": (torch.cuda.max_memory_allocated() - start) / 2**20}))
        return
    sampler = RssSampler()
    with sampler:
        (run_ours if args.child == "ours" else run_reference)(host, pathlib.Path(args.dataset), args)
    print(json.dumps({"peak_mib": sampler.peak_increase / 2**20}))


class RssSampler:
    """Highest resident set size above the level at start, sampled every millisecond.

    ``ru_maxrss`` cannot be used: loading the model already set a higher peak than training.
    """

    def __init__(self):
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(0.001)

    def __enter__(self):
        self.baseline = self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())

    @property
    def peak_increase(self):
        return self.peak - self.baseline


def _dtypes():
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="no", help="mixed precision (GPU only)")
    parser.add_argument("--child", choices=("ours", "reference"))
    parser.add_argument("--dataset")
    parser.add_argument("--cache")
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        dataset = make_dataset(tmp, args.resolution)
        # Separate host objects (same cached weights): the reference's peft layers stay in its own copy.
        reference = run_reference(load_host(tmp / "models", args.device, args.precision), dataset, args)
        ours = run_ours(load_host(tmp / "models", args.device, args.precision), dataset, args)
        memory = {which: child_peak_memory(which, args, dataset, tmp / "models") for which in ("reference", "ours")}
    print(f"embedded tiny SD-1.x model, {args.resolution}px, batch {args.batch_size}, rank {args.rank}, "
          f"{args.steps} steps ({args.warmup} warm-up), device {args.device}, precision {args.precision}")
    print(f"  reference (encoders every step): {reference * 1000:8.1f} ms/step   peak +{memory['reference']:.0f} MiB")
    print(f"  lib_lora_train (cached):         {ours * 1000:8.1f} ms/step   peak +{memory['ours']:.0f} MiB")
    print(f"  time ratio {ours / reference:.2f}x (target <= 0.80x), memory ratio "
          f"{memory['ours'] / max(memory['reference'], 1e-9):.2f}x (target <= 1.00x)")


if __name__ == "__main__":
    main()
