"""The Gradio tab a clinician uses: upload, review, caption, train, watch, register, erase.

One tab, built by :func:`.tab.build_tab` from a :class:`.context.UiContext`, mounted by the
WebUI glue (``scripts/medical_lora.py``) and by ``python -m lib_lora_train ui`` (standalone).
The handlers in :mod:`.datasets`, :mod:`.training`, :mod:`.adapters` and :mod:`.generate` hold
the logic and know nothing of Gradio, so they are tested directly; :mod:`.layout` creates the
components, :mod:`.render` the HTML panels, and :mod:`.tab` wires events to handlers.
"""
