"""medical-lora: de-identified DICOM to LoRA adapters, inside a hospital, host-agnostic.

Importing the package is cheap: heavy dependencies (pydicom, numpy, torch, ...) are
imported by the modules that need them, when they need them.
"""

__version__ = "0.1.0"
