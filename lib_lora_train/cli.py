"""Command line: ``python -m lib_lora_train <command>``.

Each command parses its options into the validated config, calls the library and turns
``LoraTrainError`` into a one-line message and an exit status; no logic lives here.
Exit status: 0 success, 1 nothing produced (every input rejected), 2 usage or setup error.
"""

import argparse
import dataclasses
import json
import logging
import sys

from . import __version__
from .config import IngestConfig, field_help
from .errors import ConfigError, LoraTrainError
from .home import HOME_ENV_VAR

logger = logging.getLogger(__name__)


def build_parser():
    """The argument parser of every command (also used by the docs test)."""
    parser = argparse.ArgumentParser(prog="python -m lib_lora_train", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medical-lora {__version__}")
    parser.add_argument("--home", help=f"data home folder (default: ${HOME_ENV_VAR}, else ~/.medical-lora)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare = commands.add_parser("prepare", help="de-identify DICOM inputs into a captioned training set")
    _add_ingest_arguments(prepare, output_help="dataset folder (default: <home>/datasets/<new id>)")
    convert = commands.add_parser("dicom2png", help="de-identify and convert DICOM inputs to PNG only")
    _add_ingest_arguments(convert, output_help="folder for images/ and report.json", output_required=True)
    train = commands.add_parser("train", help="train a LoRA adapter on a prepared dataset")
    train.add_argument("--config", "-c", required=True, help="YAML file (nested model_config/train_config or flat)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (YAML value), e.g. --set lora_rank=4; repeatable")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from .registry.commands import add_parsers as add_registry_parsers

    add_registry_parsers(commands)
    demo = commands.add_parser("demo", help="run the pipeline end to end on generated phantom DICOMs")
    demo.add_argument("--patients", type=int, default=3, help="phantom patients to generate (default 3)")
    demo.add_argument("--slices", type=int, default=6, help="slices per patient (default 6)")
    demo.add_argument("--max-steps", type=int, default=None, help="cap the training steps (default: configs/demo.yaml)")
    ui = commands.add_parser("ui", help="serve the tab and the REST API in a browser (standalone, offline)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=7870, help="port (default 7870)")
    ui.add_argument("--auth", help="sign-in 'user:password[,user2:password2]', or a file with one per line; "
                                   "also protects the REST API (HTTP Basic)")
    ui.add_argument("--base-model", default="embedded",
                    help="local single-file SD 1.x/2.x checkpoint (.safetensors/.ckpt); default: the embedded tiny model")
    return parser


def _add_ingest_arguments(parser, output_help, output_required=False):
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="PATH",
                        help="DICOM files, folders (searched recursively) or .zip archives")
    parser.add_argument("--output", "-o", required=output_required, help=output_help)
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in the output folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    helps = field_help(IngestConfig)
    for field in dataclasses.fields(IngestConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool or isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helps[field.name])
        elif field.name == "blank_regions":
            parser.add_argument("--blank-region", dest="blank_regions", action="append", metavar="X0,Y0,X1,Y1",
                                help=helps[field.name])
        else:
            kind = int if isinstance(field.default, int) else str
            parser.add_argument(flag, dest=field.name, type=kind, default=None,
                                help=f"{helps[field.name]} (default: {field.default})")


def ingest_config_from_args(args):
    """Build the validated :class:`IngestConfig` from parsed arguments (unset keep defaults)."""
    values = {}
    for field in dataclasses.fields(IngestConfig):
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if field.name == "blank_regions":
            value = tuple(_parse_region(text) for text in value)
        values[field.name] = value
    return IngestConfig.from_dict(values)


def _parse_region(text):
    try:
        region = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--blank-region {text!r} must be four whole numbers X0,Y0,X1,Y1") from None
    if len(region) != 4:
        raise ConfigError(f"--blank-region {text!r} must be four whole numbers X0,Y0,X1,Y1")
    return region


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    from . import commands

    try:
        return commands.run(args)
    except LoraTrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def print_json(payload):
    """Print a JSON document to stdout."""
    print(json.dumps(payload, indent=2, sort_keys=True))
