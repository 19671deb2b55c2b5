"""Export of trained adapters: kohya key names, allow-listed metadata and the safetensors file."""
