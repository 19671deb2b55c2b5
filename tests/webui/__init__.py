"""Tests of the WebUI glue (lib_lora_train.webui) against the stand-in WebUI modules."""
