"""What each CLI command does, on top of the library; output for people or for scripts."""

import sys

from .cli import ingest_config_from_args, print_json
from .dicom.pseudonym import Pseudonymizer, load_or_create_site_key
from .home import resolve_home


def run(args):
    """Dispatch a parsed command line; returns the exit status."""
    home = resolve_home(args.home).ensure()
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(home, patients=args.patients, slices=args.slices, max_steps=args.max_steps)
    if args.command == "train":
        return _run_train(args, home)
    if args.command == "ui":
        from .ui.standalone import serve

        serve(home, host=args.host, port=args.port, auth=args.auth, base_model=args.base_model)
        return 0
    if args.command in ("registry", "audit"):
        from .registry.commands import run as run_registry

        return run_registry(args, home)
    return _run_ingest(args, home, captions=args.command == "prepare")


def _run_train(args, home):
    from .config import load_config
    from .registry.commands import cli_actor
    from .trainer.api import LoRATrainer
    from .workflow import check_registry_fields, train_and_register

    trainer = LoRATrainer(load_config(args.config, args.overrides), home)
    check_registry_fields(trainer.config)
    trainer.prepare_data()
    trainer.build_model()
    try:
        with progress_bar("training", disable=args.no_progress, training=True) as progress:
            result, exported, record = train_and_register(trainer, actor=cli_actor(), progress=progress)
    except KeyboardInterrupt:
        print("training interrupted; nothing was exported and the base model is unchanged", file=sys.stderr)
        return 130
    summary = {"name": exported.name, "file": str(exported.path), "size_bytes": exported.size_bytes,
               "sha256": exported.sha256, "steps": result.steps, "stopped": result.stopped,
               "final_loss": result.final_loss, "prompt": f"<lora:{exported.name}:0.7>",
               "registry_id": record.id, "expires": record.expires_at}
    if args.json:
        print_json(summary)
    else:
        print(f"adapter {exported.name}: {exported.path} ({exported.size_bytes / 1e6:.1f} MB, sha256 "
              f"{exported.sha256[:12]})")
        print(f"  {result.steps} steps ({result.stopped}), final loss {result.final_loss:.4f}; "
              f"loss log and curve in {exported.path.parent}")
        print(f"  registered as {record.id} (expires {record.expires_at}); use it in a prompt: <lora:{exported.name}:0.7>")
    return 0


def _run_ingest(args, home, captions):
    from .dataset.prepare import new_dataset_id
    from .registry.commands import cli_actor
    from .workflow import ingest

    config = ingest_config_from_args(args)
    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    dataset_id = new_dataset_id()
    output = args.output or home.datasets_dir / dataset_id
    with progress_bar("de-identifying", disable=args.no_progress) as progress:
        result = ingest(home, args.input, output, config, pseudonymizer, actor=cli_actor(), overwrite=args.overwrite,
                        captions=captions, progress=progress, dataset_id=dataset_id)
    if args.json:
        print_json(result.report)
    else:
        print(format_report(result.report, result.output_dir))
    return 0 if result.ok else 1


class progress_bar:
    """A tqdm bar fed by callbacks; a no-op without tqdm or when disabled.

    Used as ``with progress_bar("de-identifying") as update: update(done, total)`` for files,
    or with ``training=True`` as the trainer's callback, showing step, loss and epoch.
    """

    def __init__(self, description, disable=False, training=False):
        self.description = description
        self.disable = disable
        self.training = training
        self._bar = None

    def __enter__(self):
        return self.update_training if self.training else self.update

    def update(self, done, total, postfix=None):
        if self.disable:
            return
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self.disable = True
                return
            unit = "step" if self.training else "file"
            self._bar = tqdm(total=total, desc=self.description, unit=unit, file=sys.stderr)
        self._bar.n = done
        if postfix:
            self._bar.set_postfix(postfix)
        self._bar.refresh()

    def update_training(self, progress):
        self.update(progress.step, progress.total_steps, {"loss": f"{progress.loss:.4f}", "epoch": progress.epoch})

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()


def format_report(report, output_dir):
    """Readable summary of a ``report.json``."""
    counts = report["counts"]
    lines = [
        f"dataset {report['dataset_id']} in {output_dir}",
        f"  inputs: {counts['inputs']}  accepted: {counts['accepted_files']}  rejected: {counts['rejected_files']}",
        f"  images: {counts['images']}  patients: {counts['patients']}  studies: {counts['studies']}"
        f"  (pseudonymous counts)",
    ]
    if report["modalities"]:
        lines.append("  modalities: " + ", ".join(f"{m or 'unknown'} {n}" for m, n in report["modalities"].items()))
    if report["rejected"]:
        lines.append("  rejected:")
        width = max(len(item["input"]) for item in report["rejected"])
        for item in report["rejected"]:
            reason = item["reason"].split(": ", 1)[-1] if item["reason"].startswith(item["input"]) else item["reason"]
            lines.append(f"    {item['input']:<{width}}  sha256 {item['sha256'] or '-':<12}  [{item['code']}] {reason}")
    lines += [f"  {warning}" for warning in report["warnings"]]
    return "\n".join(lines)
