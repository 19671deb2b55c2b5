"""Glue between exported adapters and a running AUTOMATIC1111 WebUI (1.10.x) or Forge.

The code here never imports WebUI modules itself: a thin caller inside the WebUI imports them
lazily and passes them in, so the package imports and is tested without a WebUI.
"""
