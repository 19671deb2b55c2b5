"""WebUI glue: an always-visible script that reports registered adapters used in a generation."""

from modules import scripts, shared

from lib_lora_train.settings import home_from_options
from lib_lora_train.webui.usage import UsageRecorder, lora_names


class MedicalLoraUsage(scripts.Script):
    """No UI; ``process_batch`` runs after the WebUI parsed ``<lora:...>`` tags (A1111_CONTRACT 1.6)."""

    recorder = None

    def title(self):
        return "medical-lora usage"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_batch(self, p, *args, **kwargs):
        names = lora_names(getattr(p, "extra_network_data", None))
        if names:
            if MedicalLoraUsage.recorder is None:
                MedicalLoraUsage.recorder = UsageRecorder(home_from_options(shared.opts.data).ensure())
            MedicalLoraUsage.recorder.record(names, actor=getattr(p, "user", None))
