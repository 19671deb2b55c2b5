"""``LoRATrainer``: the seed project's interface, on top of hosts, the loop and export.

    trainer = LoRATrainer(load_config("configs/medical_lora.yaml"))
    trainer.prepare_data()
    trainer.build_model()
    result = trainer.train()
    exported = trainer.export_lora_weights()

The same object serves the CLI, the standalone app and the WebUI (which passes its own
host for the checkpoint it has loaded).
"""

import logging
import pathlib
import secrets
import time

from .. import __version__
from ..errors import LoraTrainError
from ..fileio import write_json_atomic
from ..home import resolve_home
from .data import load_examples
from .loop import plan_steps, train_lora
from .precision import Precision, resolve_precision
from .report import write_loss_curve, write_loss_log

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def host_precision(host):
    """The precision a host that was loaded elsewhere (the WebUI's checkpoint) dictates.

    Its weights already sit in their dtype on their device; the WebUI's ``apply_model`` runs
    fp16 autocast on an fp16 UNet, so bf16 mode would skip the loss scaling fp16 needs.
    """
    return Precision(device=host.device, mode=getattr(host, "mixed_precision", "no"), weight_dtype=host.dtype)


class LoRATrainer:
    """Train one LoRA adapter as described by a :class:`TrainConfig`.

    Args:
        config (`TrainConfig`): validated configuration.
        home (`DataHome`, *optional*): data home (model cache); resolved when omitted.
        host (`ModelHost`, *optional*): an already loaded model (the WebUI's); when omitted
            ``build_model`` loads ``config.base_model``.
    """

    def __init__(self, config, home=None, host=None):
        self.config = config
        self.home = home or resolve_home()
        self.host = host
        self.examples = None
        self.result = None
        self.precision = None
        self.session_id = secrets.randbelow(2**32)

    def prepare_data(self):
        """Read the prepared dataset's ``metadata.csv``; returns the examples."""
        self.examples = load_examples(self.config.train_data_dir, self.config.resolved_metadata_path())
        logger.info("%d training images", len(self.examples))
        return self.examples

    def build_model(self):
        """Load the base model (embedded or a local single file), frozen, unless one was given."""
        if self.host is not None:
            self.precision = host_precision(self.host)
            return self.host
        self.precision = resolve_precision(self.config.device, self.config.mixed_precision)
        if self.host is None:
            from ..hosts.diffusers_host import DiffusersHost

            cache = self.home.ensure().root / "models"
            if self.config.base_model == "embedded":
                self.host = DiffusersHost.embedded(cache, device=self.precision.device,
                                                   dtype=self.precision.weight_dtype)
            else:
                self.host = DiffusersHost.from_single_file(
                    self.config.base_model, cache, device=self.precision.device, dtype=self.precision.weight_dtype,
                    prediction_type=self.config.prediction_type)
        return self.host

    def train(self, cancel_event=None, progress=None):
        """Run the loop; returns the :class:`TrainResult` (also kept for export)."""
        if self.examples is None:
            self.prepare_data()
        if self.host is None or self.precision is None:
            self.build_model()
        checkpoint_dir = pathlib.Path(self.config.output_dir) / "checkpoints"
        self.result = train_lora(self.host, self.examples, self.config, self.precision, cancel_event=cancel_event,
                                 progress=progress, checkpoint_dir=checkpoint_dir,
                                 sample_dir=pathlib.Path(self.config.output_dir) / "samples")
        output = pathlib.Path(self.config.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        write_loss_log(output / "losses.csv", self.result.losses)
        write_loss_curve(output / "loss_curve.png", self.result.losses)
        return self.result

    def total_steps(self):
        """Optimizer steps the run will take (after ``prepare_data``)."""
        return plan_steps(len(self.examples), self.config)[1]

    def export_lora_weights(self, output_dir=None, registry_id=None):
        """Write the adapter (kohya keys, string metadata, fp16 by default), atomically.

        Writes ``pytorch_lora_weights.safetensors`` and ``NAME.safetensors`` (same bytes) in
        ``output_dir`` (default: the config's).

        Raises:
            LoraTrainError: there is nothing to export (no finished run).
        """
        from ..export.package import export_adapter

        if self.result is None or self.result.stopped == "cancelled":
            raise LoraTrainError("nothing to export: training did not finish (it was cancelled or never ran)")
        folder = pathlib.Path(output_dir or self.config.output_dir)
        exported = export_adapter(folder, self.config, self.host.facts, self.result, session_id=self.session_id,
                                  registry_id=registry_id, file_names=(WEIGHTS_FILE,))
        summary = {
            "name": exported.name, "sha256": exported.sha256, "size_bytes": exported.size_bytes,
            "steps": self.result.steps, "epochs": self.result.epochs, "stopped": self.result.stopped,
            "final_loss": self.result.final_loss, "images": self.result.num_images,
            "base_model": self.host.facts.display_name, "base_fingerprint": self.result.base_fingerprint,
            "tool_version": __version__, "exported_at": time.time(),
        }
        write_json_atomic(folder / "training_summary.json", summary)
        return exported
