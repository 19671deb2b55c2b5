"""LoRA layers on a frozen model: inject, train-ready parameters, PEFT-named state, and removal."""
